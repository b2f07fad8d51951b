"""FalkorDB (the graph module of the embedded Redis): the message and entity graph.

The Cypher is the shared projection (:mod:`projectors.stores.cypher`); this module only
connects, creates the indexes and resets. FalkorDB runs the queries of one graph one at a
time, so each batch statement is atomic and isolated without constraints or locks.
"""

from __future__ import annotations

from typing import Any, ClassVar

import redis.exceptions
from falkordb.asyncio import FalkorDB  # type: ignore[import-untyped]
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url

from projectors.stores.cypher import KEYS, LOOKUPS, CypherGraphStore, Rows, Statement

ALREADY_INDEXED = "already indexed"
"""FalkorDB has no ``CREATE INDEX IF NOT EXISTS``: an existing index is an error saying so."""


class FalkorDBGraphStore(CypherGraphStore):
    store = "falkordb"
    mentions = "indegree(e, 'MENTIONS')"
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        OSError,
    )

    def __init__(self, *, url: str, graph: str = "amem") -> None:
        """``url``: a server, or any node of a Redis Cluster (the client finds the node that
        holds the graph's key: a graph lives whole on one node)."""
        self._url = url
        self._graph_name = graph
        self._db: Any = None
        self._graph: Any = None

    async def start(self) -> None:
        if self._db is None:
            self._db = _connect(self._url)
            self._graph = self._db.select_graph(self._graph_name)
            # Statements carry message texts as parameters; with CMD_INFO on, FalkorDB keeps
            # them in telemetry{<graph>} after an erase. Off on whichever server we use.
            connection = self._db.connection
            every_node = (
                {"target_nodes": RedisCluster.ALL_NODES}
                if isinstance(connection, RedisCluster)
                else {}
            )
            await connection.execute_command("GRAPH.CONFIG", "SET", "CMD_INFO", "no", **every_node)
        for label, prop in (*KEYS, *LOOKUPS):
            try:
                await self._graph.query(f"CREATE INDEX FOR (n:{label}) ON (n.{prop})")
            except redis.exceptions.ResponseError as exc:
                if ALREADY_INDEXED not in str(exc):
                    raise

    async def close(self) -> None:
        if self._db is not None:
            await self._db.aclose()
            self._db = self._graph = None

    async def reset(self) -> None:
        # Everything in this graph is ours; deleting the nodes keeps the indexes.
        await self._run(Statement("MATCH (n) DETACH DELETE n", write=True))

    async def drop(self) -> None:
        if self._graph is None:
            raise RuntimeError("FalkorDBGraphStore used before start()")
        try:
            await self._graph.delete()
        except redis.exceptions.ResponseError as exc:
            if "Invalid graph operation on empty key" not in str(exc):
                raise

    async def _run(self, statement: Statement) -> Rows:
        # GRAPH.QUERY even for reads: GRAPH.RO_QUERY fails on a graph not created yet.
        if self._graph is None:
            raise RuntimeError("FalkorDBGraphStore used before start()")
        result = await self._graph.query(statement.text, statement.params)
        rows: Rows = result.result_set
        return rows


def _connect(url: str) -> Any:
    """A FalkorDB client of ``url``'s server, whose connections it owns.

    Not ``FalkorDB.from_url``: the pool it makes is not closed with the client, and on a
    cluster node its cluster client fails on a URL without credentials (it expects a
    ``username`` and ``password`` among the pool's options).
    """
    options = parse_url(url)
    return FalkorDB(
        host=options.get("host", "localhost"),
        port=options.get("port", 6379),
        username=options.get("username"),
        password=options.get("password"),
        unix_socket_path=options.get("path"),
        ssl=options.get("connection_class") is SSLConnection,
        socket_connect_timeout=10,
    )
