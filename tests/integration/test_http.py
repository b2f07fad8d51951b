"""The HTTP API against the real embedded log and stores: tenants, errors, local mode."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, get_args
from urllib.parse import quote

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI

from rehydrator.http import MAX_BODY_BYTES
from rehydrator.http_keys import LOCAL_TENANT, ApiKeys, parse_api_keys
from rehydrator.http_models import ContextOut, ItemOut, MessageOut, Role, TierOut
from schemas.codec import decode
from schemas.constants import ENTRY_FIELD, log_key
from schemas.errors import ConfigurationError
from schemas.events import ROLES, Event
from stack.serve import build_app, openapi_document
from stack.settings import Settings
from tests.conftest import REPO
from tests.integration.test_cli import AMEM

KEY_A = "key-for-tenant-a-0123456789abcdef"
KEY_B = "key-for-tenant-b-0123456789abcdef"
TENANT_A, TENANT_B = "tenant-a", "tenant-b"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"X-API-Key": KEY_B}
SLOW = {"deadline_ms": 10_000}
"""Rehydrate with time to spare: a tier missing the 80 ms default on a busy test machine
would leave messages out, and these tests are about who sees what, not about latency."""


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app`` with its lifespan entered (httpx's ASGI transport does not)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.fixture(scope="module")
async def log(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.require_redis())
    try:
        yield client
    finally:
        await client.flushdb()  # leave the log empty, as conftest's fixtures expect it
        await client.aclose()


@pytest.fixture(scope="module")
async def client(settings: Settings, log: aioredis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    keys = ApiKeys.for_bind({KEY_A: TENANT_A, KEY_B: TENANT_B}, "127.0.0.1")
    async with serving(build_app(settings, keys)) as client:
        yield client


@pytest.fixture(scope="module")
async def local(settings: Settings, log: aioredis.Redis) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(build_app(settings, ApiKeys.for_bind({}, "127.0.0.1"))) as client:
        yield client


def new_session() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


async def log_length(log: aioredis.Redis, settings: Settings) -> int:
    async with log.pipeline(transaction=False) as pipe:
        for n in range(settings.producer.partitions):
            pipe.xlen(log_key(n))
        return sum(await pipe.execute())


async def entry(log: aioredis.Redis, partition: int, position: str) -> Event:
    """The event the log holds at ``position`` (to check whose tenant it was written for)."""
    found = await log.xrange(log_key(partition), position, position)
    assert found is not None
    ((_, fields),) = found
    assert fields is not None
    raw = fields[ENTRY_FIELD.encode()]
    assert isinstance(raw, bytes)
    return decode(raw)


def say(*contents: str, **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": c, **fields} for c in contents]}


async def history(client: httpx.AsyncClient, session: str, headers: dict[str, str]) -> list[str]:
    response = await client.get(f"/v1/sessions/{session}/messages", headers=headers)
    assert response.status_code == 200, response.text
    return [m["content"] for m in response.json()["messages"]]


async def test_append_read_and_rehydrate_with_read_your_writes(
    client: httpx.AsyncClient, log: aioredis.Redis
) -> None:
    session = new_session()
    body = {
        "messages": [
            {"id": "m1", "role": "user", "content": "Book a table for two.", "name": "jo"},
            {"role": "assistant", "content": "Done: 8 pm.", "metadata": {"channel": "web"}},
        ]
    }
    first = await client.post(f"/v1/sessions/{session}/messages", json=body, headers=A)
    assert first.status_code == 201, first.text
    appended = first.json()["messages"]
    assert appended[0]["id"] == "m1"
    assert [m["duplicate"] for m in appended] == [False, False]
    event = await entry(log, appended[0]["partition"], appended[0]["position"])
    assert (event.tenant_id, event.session_id) == (TENANT_A, session)

    again = await client.post(f"/v1/sessions/{session}/messages", json=say("x", id="m1"), headers=A)
    assert again.status_code == 201
    (retried,) = again.json()["messages"]
    assert (retried["duplicate"], retried["position"]) == (True, appended[0]["position"])

    # No projector runs here: both reads find the messages in the log itself.
    read = await client.get(f"/v1/sessions/{session}/messages", headers=A)
    assert [(m["id"], m["content"], m["name"]) for m in read.json()["messages"]] == [
        ("m1", "Book a table for two.", "jo"),
        (appended[1]["id"], "Done: 8 pm.", None),
    ]
    assert read.json()["messages"][1]["metadata"] == {"channel": "web"}
    last = await client.get(f"/v1/sessions/{session}/messages?limit=1", headers=A)
    assert [m["content"] for m in last.json()["messages"]] == ["Done: 8 pm."]

    context = await client.post(f"/v1/sessions/{session}/rehydrate", json=SLOW, headers=A)
    assert context.status_code == 200, context.text
    got = context.json()
    assert (got["tenant_id"], got["session_id"]) == (TENANT_A, session)
    assert [i["content"] for i in got["items"]] == ["Book a table for two.", "Done: 8 pm."]
    assert got["messages"][-1] == {"role": "assistant", "content": "Done: 8 pm."}
    assert got["from_log_tail"] == 2
    # The published schema names every field the rehydrator answers with, and no other.
    assert set(got) == set(ContextOut.model_fields)
    assert set(got["items"][0]) == set(ItemOut.model_fields)
    assert set(got["tiers"][0]) == set(TierOut.model_fields)
    assert set(read.json()["messages"][0]) == set(MessageOut.model_fields)


async def test_a_slash_in_a_session_id_travels_as_percent_2f(
    client: httpx.AsyncClient, log: aioredis.Redis, settings: Settings
) -> None:
    session = f"team/{new_session()}:1@x"
    encoded = quote(session, safe="")
    post = await client.post(f"/v1/sessions/{encoded}/messages", json=say("hi"), headers=A)
    assert post.status_code == 201, post.text
    event = await entry(
        log, post.json()["messages"][0]["partition"], post.json()["messages"][0]["position"]
    )
    assert event.session_id == session
    assert await history(client, encoded, A) == ["hi"]
    # Unencoded, the "/" splits the path: no route takes it, and above all DELETE on a
    # session's messages is not an erase of a session named "<id>/messages".
    unencoded = await client.get(f"/v1/sessions/{session}/messages", headers=A)
    assert unencoded.status_code == 404
    before = await log_length(log, settings)
    for sub in ("messages", "rehydrate"):
        response = await client.delete(f"/v1/sessions/{encoded}/{sub}", headers=A)
        assert response.status_code == 405
    assert await log_length(log, settings) == before


async def test_a_key_for_one_tenant_never_reaches_another_on_any_route(
    client: httpx.AsyncClient, log: aioredis.Redis
) -> None:
    session = new_session()
    url = f"/v1/sessions/{session}"
    secret = "A's secret: the safe code is 4711"
    appended = await client.post(f"{url}/messages", json=say(secret, id="m1"), headers=A)
    assert appended.status_code == 201

    assert await history(client, session, B) == []
    context = await client.post(f"{url}/rehydrate", json={"query": "safe code", **SLOW}, headers=B)
    assert context.status_code == 200
    assert context.json()["items"] == []
    assert "4711" not in context.text

    # The same session and message id under B is B's own: not a duplicate of A's.
    written = await client.post(f"{url}/messages", json=say("B's note", id="m1"), headers=B)
    assert written.json()["messages"][0]["duplicate"] is False
    assert await history(client, session, B) == ["B's note"]
    assert await history(client, session, A) == [secret]

    erased = await client.delete(url, headers=B)
    assert erased.status_code == 202
    event = await entry(log, erased.json()["partition"], erased.json()["position"])
    assert (event.tenant_id, event.session_id) == (TENANT_B, session)
    assert await history(client, session, B) == []
    assert await history(client, session, A) == [secret]
    context = await client.post(f"{url}/rehydrate", json=SLOW, headers=A)
    assert [i["content"] for i in context.json()["items"]] == [secret]

    health = await client.get("/v1/health")
    for leak in (TENANT_A, session, "4711", KEY_A, "redis://", "postgresql://"):
        assert leak not in health.text


async def test_a_user_scope_reaches_the_users_sessions_of_its_tenant_only(
    client: httpx.AsyncClient,
) -> None:
    user = f"u-{new_session()}"
    earlier, other_user, now = new_session(), new_session(), new_session()
    for session, headers, who, text in [
        (earlier, A, user, "My sister's name is Mia."),
        (other_user, A, f"{user}-2", "My sister's name is Zoe."),
        (earlier, B, user, "My sister's name is Ada."),  # same ids under another tenant
    ]:
        sent = await client.post(
            f"/v1/sessions/{session}/messages", json=say(text, user_id=who), headers=headers
        )
        assert sent.status_code == 201, sent.text
    asked = {"query": "What is my sister's name?", "scope": "user", "user_id": user, **SLOW}
    context = await client.post(f"/v1/sessions/{now}/rehydrate", json=asked, headers=A)
    assert context.status_code == 200, context.text
    got = context.json()
    assert (got["scope"], got["user_id"]) == ("user", user)
    assert [(i["session_id"], i["content"], i["user_id"]) for i in got["items"]] == [
        (earlier, "My sister's name is Mia.", user)
    ]
    assert "Zoe" not in context.text
    assert "Ada" not in context.text
    alone = await client.post(
        f"/v1/sessions/{now}/rehydrate", json={**asked, "scope": "session"}, headers=A
    )
    assert alone.json()["items"] == []
    nobody = await client.post(
        f"/v1/sessions/{now}/rehydrate", json={"scope": "user", **SLOW}, headers=A
    )
    assert nobody.status_code == 422
    assert nobody.json()["error"].startswith("user_id:")


async def test_an_erase_hides_earlier_messages_at_once_and_later_ones_stay(
    client: httpx.AsyncClient,
) -> None:
    session = new_session()
    url = f"/v1/sessions/{session}"
    await client.post(f"{url}/messages", json=say("before"), headers=A)
    erased = await client.delete(f"{url}?reason=user%20request", headers=A)
    assert erased.status_code == 202
    assert erased.json()["status"] == "accepted"
    assert "asynchronously" in erased.json()["detail"]
    assert await history(client, session, A) == []
    await client.post(f"{url}/messages", json=say("after"), headers=A)
    assert await history(client, session, A) == ["after"]
    context = await client.post(f"{url}/rehydrate", json=SLOW, headers=A)
    assert [i["content"] for i in context.json()["items"]] == ["after"]


async def test_a_redaction_hides_the_message_at_once_and_keeps_the_rest(
    client: httpx.AsyncClient,
) -> None:
    session = new_session()
    url = f"/v1/sessions/{session}"
    turns = [("a", "kept before"), ("b/1", "forget me"), ("c", "kept after")]
    appended = await client.post(
        f"{url}/messages",
        json={"messages": [{"id": i, "role": "user", "content": c} for i, c in turns]},
        headers=A,
    )
    assert appended.status_code == 201, appended.text
    redacted = await client.delete(f"{url}/messages/b%2F1?reason=user%20request", headers=A)
    assert redacted.status_code == 202, redacted.text
    body = redacted.json()
    assert (body["status"], body["session_id"], body["message_id"]) == ("accepted", session, "b/1")
    assert "asynchronously" in body["detail"]
    assert await history(client, session, A) == ["kept before", "kept after"]
    context = await client.post(f"{url}/rehydrate", json=SLOW, headers=A)
    assert [i["content"] for i in context.json()["items"]] == ["kept before", "kept after"]
    # Another tenant's redaction of the same ids reaches nothing of this one.
    await client.delete(f"{url}/messages/a", headers=B)
    assert await history(client, session, A) == ["kept before", "kept after"]


ROUTES = [
    ("POST", "/v1/sessions/s1/messages", say("hi")),
    ("POST", "/v1/sessions/s1/rehydrate", {}),
    ("GET", "/v1/sessions/s1/messages", None),
    ("DELETE", "/v1/sessions/s1", None),
    ("DELETE", "/v1/sessions/s1/messages/m1", None),
]
CREDENTIALS = {
    "none": {},
    "unknown-bearer": {"Authorization": f"Bearer {KEY_A}x"},
    "unknown-x-api-key": {"X-API-Key": KEY_B[:-1]},
    "basic-scheme": {"Authorization": f"Basic {KEY_A}"},
    "two-different-keys": {"Authorization": f"Bearer {KEY_A}", "X-API-Key": KEY_B},
}


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
@pytest.mark.parametrize("credentials", list(CREDENTIALS.values()), ids=list(CREDENTIALS))
async def test_every_route_but_health_refuses_a_missing_or_unknown_key(
    client: httpx.AsyncClient,
    log: aioredis.Redis,
    settings: Settings,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    credentials: dict[str, str],
) -> None:
    before = await log_length(log, settings)
    response = await client.request(method, path, json=body, headers=credentials)
    assert response.status_code == 401
    assert set(response.json()) == {"error"}
    assert "\n" not in response.json()["error"]
    assert KEY_A not in response.text
    assert KEY_B not in response.text
    assert await log_length(log, settings) == before


async def test_health_needs_no_key_and_says_only_up_or_down(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/health")
    assert response.status_code == 200
    got = response.json()
    assert got["status"] == "ok"
    assert set(got["services"]) == {"redis", "postgres", "mongo"}
    for service in got["services"].values():
        assert set(service) == {"ok", "ms"}
        assert service["ok"] is True


def deep(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    for _ in range(depth - 1):
        node = {"k": node}
    return node


BAD_INPUT: dict[str, tuple[str, str, Any, int, str]] = {
    # name: (method, path, JSON body or raw bytes, status, what the error line must say)
    "unknown-role": ("POST", "messages", {"messages": [{"role": "wizard", "content": "x"}]}, 422,
                     "messages[0].role: input should be"),
    "id-with-a-space": ("POST", "messages", say("x", id="has space"), 422, "messages[0].id"),
    "session-id-with-a-space": ("POST", "/v1/sessions/bad%20id/messages", say("x"), 422,
                                "session_id: string should match pattern"),
    "content-over-256KiB-in-chars": ("POST", "messages", say("a" * 300_000), 422,
                                     "messages[0].content: string should have at most 262144"),
    "content-over-256KiB-in-bytes": ("POST", "messages", say("€" * 100_000), 422,
                                     "content: is 300000 bytes (limit: 262144 bytes of UTF-8)"),
    "nul-in-content": ("POST", "messages", say("a\x00b"), 422, "content: contains a NUL"),
    "one-bad-message-appends-none": ("POST", "messages", say("fine", "bad\x00"), 422,
                                     "content: contains a NUL"),
    "1001-messages": ("POST", "messages", say(*["x"] * 1001), 422,
                      "messages: list should have at most 1000 items"),
    "no-messages": ("POST", "messages", {"messages": []}, 422, "messages: list should have"),
    "tenant-in-the-body": ("POST", "messages", say("x", tenant_id=TENANT_B), 422,
                           "messages[0].tenant_id: extra inputs are not permitted"),
    "timestamp-without-zone": ("POST", "messages", say("x", created_at="2026-01-01T10:00:00"),
                               422, "messages[0].created_at: input should have timezone"),
    "metadata-too-deep": ("POST", "messages", say("x", metadata=deep(9)), 422,
                          "metadata: nests deeper than 8"),
    "metadata-too-large": ("POST", "messages", say("x", metadata={"k": "v" * 17_000}), 422,
                           "metadata: is 17008 bytes as JSON (limit: 16384 bytes)"),
    "malformed-json": ("POST", "messages", b'{"messages": [', 422, "body: invalid JSON"),
    "body-over-the-limit": ("POST", "messages", b" " * (MAX_BODY_BYTES + 1), 413, "body: over"),
    "budget-0": ("POST", "rehydrate", {"budget_tokens": 0}, 422,
                 "budget_tokens: input should be greater than or equal to 1"),
    "budget-over-1M": ("POST", "rehydrate", {"budget_tokens": 1_000_001}, 422, "budget_tokens"),
    "nul-in-query": ("POST", "rehydrate", {"query": "a\x00"}, 422, "query: contains a NUL"),
    "limit-0": ("GET", "messages?limit=0", None, 422, "limit: input should be greater"),
    "nul-in-erase-reason": ("DELETE", "", None, 422, "reason: contains a NUL"),
    "unknown-route": ("GET", "/v1/nothing", None, 404, "Not Found"),
    "wrong-method": ("PUT", "/v1/sessions/s1/rehydrate", None, 405, "Method Not Allowed"),
}  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"), list(BAD_INPUT.values()), ids=list(BAD_INPUT)
)
async def test_bad_input_gets_a_one_line_4xx_and_the_log_is_unchanged(
    client: httpx.AsyncClient,
    log: aioredis.Redis,
    settings: Settings,
    method: str,
    path: str,
    body: Any,
    status: int,
    says: str,
) -> None:
    url = path if path.startswith("/") else f"/v1/sessions/{new_session()}/{path}".rstrip("/")
    params = {"reason": "a\x00b"} if method == "DELETE" else None
    raw = {"content": body, "headers": {**A, "Content-Type": "application/json"}}
    sent = raw if isinstance(body, bytes) else {"json": body, "headers": A}
    before = await log_length(log, settings)
    response = await client.request(method, url, params=params, **sent)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(response.json()) == {"error"}
    assert "\n" not in error
    assert len(error) <= 400
    assert says in error
    assert await log_length(log, settings) == before


async def test_local_mode_needs_no_key_and_is_tenant_default(
    local: httpx.AsyncClient, log: aioredis.Redis
) -> None:
    session = new_session()
    appended = await local.post(f"/v1/sessions/{session}/messages", json=say("hello"))
    assert appended.status_code == 201, appended.text
    (result,) = appended.json()["messages"]
    event = await entry(log, result["partition"], result["position"])
    assert event.tenant_id == LOCAL_TENANT
    context = await local.post(f"/v1/sessions/{session}/rehydrate", json=SLOW)
    assert context.json()["tenant_id"] == LOCAL_TENANT
    assert await history(local, session, {}) == ["hello"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_local_mode_is_allowed_on_loopback(host: str) -> None:
    assert ApiKeys.for_bind({}, host).local


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "api.example.org", ""])
def test_local_mode_is_refused_off_loopback(host: str) -> None:
    with pytest.raises(ConfigurationError, match="without API keys"):
        ApiKeys.for_bind({}, host)
    assert not ApiKeys.for_bind({KEY_A: TENANT_A}, host).local


def test_api_keys_parse_and_never_echo_a_key() -> None:
    padded = "c2VjcmV0LWtleS1mb3ItdGVuYW50LWE="
    keys = parse_api_keys(f" {KEY_A}={TENANT_A} , {padded}=acme:eu ,")
    assert keys == {KEY_A: TENANT_A, padded: "acme:eu"}
    found = ApiKeys.for_bind(keys, "0.0.0.0")
    assert (found.tenant_for(padded), found.tenant_for(KEY_A + "x"), found.tenant_for("")) == (
        "acme:eu",
        None,
        None,
    )
    for bad in ("short=t", f"{KEY_A}=bad tenant", f"{KEY_A}", f"{KEY_A}=a,{KEY_A}=b"):
        with pytest.raises(ConfigurationError) as raised:
            parse_api_keys(bad)
        assert KEY_A not in str(raised.value)
        assert "short" not in str(raised.value)
    settings = Settings.from_env({"AMEM_API_KEYS": f"{KEY_A}={TENANT_A}", "AMEM_HOME": "/nowhere"})
    assert settings.api_keys == {KEY_A: TENANT_A}
    assert KEY_A not in repr(settings)


def test_amem_serve_refuses_a_public_bind_without_keys(stack_env: dict[str, str]) -> None:
    result = subprocess.run(
        [*AMEM, "serve", "--host", "0.0.0.0"],
        env=stack_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith("error: refusing to serve on 0.0.0.0 without API keys")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(params=[1, 2], ids=["one-process", "two-processes"])
def server(
    stack_env: dict[str, str], request: pytest.FixtureRequest
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    process = subprocess.Popen(
        [*AMEM, "serve", "--port", str(port), "--workers", str(request.param)],
        env=stack_env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        assert process.stderr is not None
        process.stderr.close()


def test_amem_serve_runs_in_local_mode_on_loopback_and_stops_on_sigterm(
    server: tuple[subprocess.Popen[str], str],
) -> None:
    process, url = server
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, "amem serve exited"
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "amem serve did not answer in 90 s"
        time.sleep(0.2)
    session = new_session()
    appended = httpx.post(f"{url}/v1/sessions/{session}/messages", json=say("hi"), timeout=10)
    assert appended.status_code == 201, appended.text
    read = httpx.get(f"{url}/v1/sessions/{session}/messages", timeout=10)
    assert [m["content"] for m in read.json()["messages"]] == ["hi"]
    process.terminate()
    # uvicorn shuts down gracefully, then re-raises the signal it caught: dying "of" SIGTERM.
    assert process.wait(30) in (0, -signal.SIGTERM)
    assert process.stderr is not None
    said = process.stderr.read()
    assert "LOCAL MODE" in said
    assert "Application shutdown complete" in said


def test_roles_match_the_log_contract() -> None:
    assert set(get_args(Role)) == ROLES


def test_published_openapi_is_the_apps_current_schema() -> None:
    published = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert published == openapi_document(), (
        "docs/openapi.json is stale: run `amem serve --openapi docs/openapi.json`"
    )
