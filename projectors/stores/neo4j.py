"""Neo4j 5 (async driver): the message and entity graph.

The Cypher is the shared projection (:mod:`projectors.stores.cypher`); this module only
connects, creates the schema and resets. Each statement runs in a managed transaction
(``execute_query``, which retries Neo4j's transient errors such as deadlocks).

Uniqueness constraints on the keys make concurrent MERGEs of one key safe (they lock the
key's index entry). An entity dropped as unmentioned while another worker adds a mention
to it cannot lose that mention: Neo4j refuses to commit the deletion of a node that still
has relationships, and the batch is retried.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import unquote, urlsplit, urlunsplit

from neo4j import AsyncDriver, AsyncGraphDatabase, RoutingControl
from neo4j.exceptions import ServiceUnavailable, SessionExpired

from projectors.stores.cypher import KEYS, LABELS, LOOKUPS, CypherGraphStore, Rows, Statement

SCHEMA = [
    *(
        f"CREATE CONSTRAINT amem_{label.lower()}_{prop} IF NOT EXISTS "
        f"FOR (n:{label}) REQUIRE n.{prop} IS UNIQUE"
        for label, prop in KEYS
    ),
    *(
        f"CREATE INDEX amem_{label.lower()}_{prop} IF NOT EXISTS FOR (n:{label}) ON (n.{prop})"
        for label, prop in LOOKUPS
    ),
]

RESET_BATCH = 10_000
RESET = (
    "MATCH (n) WHERE "
    + " OR ".join(f"n:{label}" for label in LABELS)
    + " WITH n LIMIT $limit DETACH DELETE n RETURN count(*)"
)
"""One bounded transaction of ``reset``: the database may be large, and may hold others' nodes."""


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``bolt://user:password@host:7687`` → the URL without them, user, password.

    The driver refuses credentials in the URL; compose.yaml's ``AMEM_NEO4J_URL`` has them.
    """
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    netloc = parts.netloc.rpartition("@")[2]
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return bare, user, password


class Neo4jGraphStore(CypherGraphStore):
    store = "neo4j"
    mentions = "COUNT { (e)<-[:MENTIONS]-() }"
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (
        ServiceUnavailable,
        SessionExpired,
        OSError,
    )

    def __init__(
        self,
        *,
        url: str,
        user: str = "neo4j",
        password: str | None = None,
        database: str | None = None,
    ) -> None:
        bare, url_user, url_password = split_credentials(url)
        self._url = bare
        # Credentials in the URL count when no password is passed.
        if password is None and url_password is not None:
            user, password = url_user or user, url_password
        self._auth = (user, password) if password is not None else None
        self._database = database
        self._driver: AsyncDriver | None = None

    async def start(self) -> None:
        if self._driver is None:
            self._driver = AsyncGraphDatabase.driver(
                self._url,
                auth=self._auth,
                # Server notifications (deprecations, plan hints) are not raised as warnings.
                warn_notification_severity="OFF",
            )
        await self._driver.verify_connectivity()
        for ddl in SCHEMA:
            await self._run(Statement(ddl, write=True))

    async def close(self) -> None:
        if self._driver is not None:
            await self._driver.close()
            self._driver = None

    async def reset(self) -> None:
        while True:
            rows = await self._run(Statement(RESET, {"limit": RESET_BATCH}, write=True))
            if not rows or int(rows[0][0]) < RESET_BATCH:
                return

    async def drop(self) -> None:
        # The nodes are ours, the database may not be (Community has one): empty it.
        await self.reset()

    async def _run(self, statement: Statement) -> Rows:
        if self._driver is None:
            raise RuntimeError("Neo4jGraphStore used before start()")
        result = await self._driver.execute_query(
            statement.text,
            statement.params,
            routing_=RoutingControl.WRITE if statement.write else RoutingControl.READ,
            database_=self._database,
        )
        return result.records
