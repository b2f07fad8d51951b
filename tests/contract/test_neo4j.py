"""The Neo4j graph adapter, where a Neo4j 5 server is reachable (compose.yaml runs one).

Set ``AMEM_TEST_NEO4J_URL`` (``bolt://host:7687``; credentials in the URL are accepted) and,
if the URL has none, ``AMEM_TEST_NEO4J_PASSWORD``. The suite resets the graph: point it at a
database holding nothing else of value.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from projectors.stores.neo4j import Neo4jGraphStore, split_credentials
from tests.contract.base import GraphStoreContract, emptied
from tests.contract.test_falkordb import CypherGraphChecks

NEO4J_URL_VAR = "AMEM_TEST_NEO4J_URL"
NEO4J_PASSWORD_VAR = "AMEM_TEST_NEO4J_PASSWORD"


@pytest.fixture
async def neo4j_store() -> AsyncIterator[Neo4jGraphStore]:
    url = os.environ.get(NEO4J_URL_VAR)
    if not url:
        pytest.skip(f"{NEO4J_URL_VAR} is not set: Neo4j cannot run here (compose.yaml has it)")
    async with emptied(
        Neo4jGraphStore(url=url, password=os.environ.get(NEO4J_PASSWORD_VAR) or None)
    ) as store:
        yield store


class TestNeo4jGraphStore(GraphStoreContract, CypherGraphChecks):
    @pytest.fixture
    def store(self, neo4j_store: Neo4jGraphStore) -> Neo4jGraphStore:
        return neo4j_store


def test_credentials_in_the_url_are_split_off() -> None:
    assert split_credentials("bolt://neo4j:amem-password@127.0.0.1:7687") == (
        "bolt://127.0.0.1:7687",
        "neo4j",
        "amem-password",
    )
    assert split_credentials("neo4j+s://u:p%40ss@db.example:7687/x") == (
        "neo4j+s://db.example:7687/x",
        "u",
        "p@ss",
    )
    assert split_credentials("bolt://127.0.0.1:7687") == ("bolt://127.0.0.1:7687", None, None)


def test_the_url_password_counts_only_when_none_is_passed() -> None:
    from_url = Neo4jGraphStore(url="bolt://admin:secret@127.0.0.1:7687")
    assert (from_url._url, from_url._auth) == ("bolt://127.0.0.1:7687", ("admin", "secret"))
    explicit = Neo4jGraphStore(url="bolt://admin:secret@127.0.0.1:7687", password="other")
    assert explicit._auth == ("neo4j", "other")
    anonymous = Neo4jGraphStore(url="bolt://127.0.0.1:7687")
    assert anonymous._auth is None
