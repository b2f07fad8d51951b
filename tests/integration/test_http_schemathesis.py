"""Schemathesis over every operation of the HTTP API: generated input never gets a 5xx.

It also holds the API to its schema: status codes, content types and response bodies as
published, and input the schema forbids refused with a 4xx. The app runs against the real
embedded log and stores, under its own tenant.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import hypothesis
import pytest
import redis.asyncio as aioredis
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.generation.case import Case
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from rehydrator.http_keys import ApiKeys
from stack.serve import build_app
from stack.settings import Settings

KEY = "schemathesis-key-0123456789abcdef"
TENANT = "schemathesis"
OPERATIONS = 6
MAX_EXAMPLES = 100
"""Per operation and generation phase: the whole run stays well under a minute."""


@pytest.fixture(scope="module")
async def clean_log(settings: Settings) -> AsyncIterator[None]:
    yield
    client = aioredis.Redis.from_url(settings.require_redis())
    try:
        await client.flushdb()  # thousands of generated entries: leave the log empty
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def api_schema(settings: Settings, clean_log: None) -> Iterator[OpenApiSchema]:
    # No projector runs here: an erase with ?wait=true answers its 504 after a second.
    waiting = dataclasses.replace(settings, erase_wait_s=1.0)
    app = build_app(waiting, ApiKeys.for_bind({KEY: TENANT}, "127.0.0.1"))
    # Loading starts the app's lifespan on schemathesis' own event loop thread, where every
    # request then runs; shut it down here, while the services it holds are still up.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    assert len(list(schema.get_all_operations())) == OPERATIONS
    try:
        yield schema
    finally:
        asgi.shutdown_lifespans()


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32.5 reads and rewrites ``request.node._nodeid`` to name each operation
    # in its reports; pytest 9.2 no longer has that attribute. Give it one: reports only.
    request.node._nodeid = request.node.nodeid


@pytest.fixture(autouse=True)
def _sockets_pymongo_leaves_to_the_collector(settings: Settings) -> None:
    # pymongo 4.20.1 does not close a socket it is connecting when its task is cancelled
    # (PYTHON-5867, fixed upstream, unreleased): the garbage collector closes it, warning.
    # Generated deadlines of 1-5 ms make the rehydrator abandon Mongo reads mid-connect.
    # Ignored for Mongo's port only, in this test only (the item's warning filters end with it).
    port = urlsplit(settings.require_mongo()).port
    warnings.filterwarnings(
        "ignore",
        message=rf"unclosed <socket\.socket .*raddr=\('[^']*', {port}\)>",
        category=ResourceWarning,
    )


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_generated_request_gets_a_server_error(case: Case[Any]) -> None:
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]
    # No projector runs here: an erase that waits can only end in its documented 504,
    # whose status and body the other checks still hold to the schema.
    wait = str((case.query or {}).get("wait", "")).lower()
    if case.method == "DELETE" and wait in ("true", "1", "yes", "on"):
        checks.remove(not_a_server_error)
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, checks=checks)
