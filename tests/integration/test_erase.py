"""Erase reaches everything: a secret is looked for in every store, key and file afterwards.

Real worker processes, the embedded services and the ``amem`` commands (and ``amem serve``)
a user runs. Each test appends sessions (or one message) carrying a unique secret beside
sessions and messages that must survive, erases (or redacts), stops the workers (Qdrant
local mode is theirs while they run) and scans every Redis key of every type, the graph,
the log server's files, every Postgres table, every Mongo collection and every Qdrant
collection.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from pymongo import AsyncMongoClient
from qdrant_client import AsyncQdrantClient

from logserver import connect
from schemas.constants import log_key
from schemas.partitioning import partition_for
from stack.settings import Settings
from tests.conftest import REPO
from tests.integration.test_cli import AMEM
from tests.integration.test_http import free_port
from tests.integration.test_project_cli import fresh
from tests.integration.test_project_cli import run_ok as run_ok_typed

__all__ = ["fresh"]  # the fixture, imported to be used here

TENANT, OTHER = "acme", "globex"
GRAPH_DUMPS = ("MATCH (n) RETURN properties(n)", "MATCH ()-[r]->() RETURN properties(r)")


def history(path: Path, sessions: dict[str, list[str]]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"session_id": s, "role": "user", "content": text}) + "\n"
            for s, texts in sessions.items()
            for text in texts
        )
    )
    return path


def talk(secret: str, n: int = 12) -> list[str]:
    return [
        f"Remember that the vault code is {secret}, Alice." if i % 3 == 0 else f"Note {i} on Kyoto"
        for i in range(n)
    ]


async def scan(settings: Settings, secret: str, *, qdrant: bool = True) -> dict[str, int]:
    """Where ``secret`` still is: place → hits (only places with hits). ``qdrant=False``
    while workers run: Qdrant local mode is theirs then."""
    needle = secret.encode()
    hits: dict[str, int] = {}

    def found(place: str, blob: bytes) -> None:
        if needle in blob:
            hits[place] = hits.get(place, 0) + 1

    # Any: every reply is only searched for the secret, whatever its shape.
    redis: Any = connect(settings.require_redis())
    try:
        async for key in redis.scan_iter(count=1_000):
            kind = (await redis.type(key)).decode()
            if kind == "string":
                found(f"redis {kind}", (await redis.get(key)) or b"")
            elif kind == "hash":
                found(f"redis {kind}", orjson.dumps(await _text(redis.hgetall(key))))
            elif kind == "list":
                found(f"redis {kind}", b"".join(await redis.lrange(key, 0, -1)))
            elif kind == "set":
                found(f"redis {kind}", b"".join(await redis.smembers(key)))
            elif kind == "zset":
                found(f"redis {kind}", b"".join(await redis.zrange(key, 0, -1)))
            elif kind == "stream":
                entries = await redis.xrange(key)
                found(
                    f"redis {kind} {key.decode()}",
                    b"".join(v for _, f in entries for v in f.values()),
                )
            else:  # the graph: every property of every node and edge
                for query in (
                    "MATCH (n) RETURN properties(n)",
                    "MATCH ()-[r]->() RETURN properties(r)",
                ):
                    reply = await redis.execute_command("GRAPH.QUERY", key, query)
                    found("graph", repr(reply).encode())
            found("redis slowlog", repr(await redis.slowlog_get(-1)).encode())
    finally:
        await redis.aclose()
    for path in (settings.home / "redis").rglob("*"):
        if path.is_file():
            found(f"log server file {path.name}", path.read_bytes())
    pg = await asyncpg.connect(settings.require_postgres())
    try:
        tables = await pg.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        for (table,) in tables:
            count = await pg.fetchval(
                f"SELECT count(*) FROM {table} t WHERE t::text LIKE '%' || $1 || '%'", secret
            )
            if count:
                hits[f"postgres {table}"] = count
    finally:
        await pg.close()
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.require_mongo())
    try:
        for name in await mongo.list_database_names():
            for collection in await mongo[name].list_collection_names():
                async for doc in mongo[name][collection].find():
                    found(f"mongo {name}.{collection}", repr(doc).encode())
    finally:
        await mongo.close()
    if qdrant:
        local = AsyncQdrantClient(path=str(settings.qdrant_path))
        try:
            for held in (await local.get_collections()).collections:
                points, _ = await local.scroll(held.name, limit=100_000, with_payload=True)
                for point in points:
                    found(f"qdrant {held.name}", repr(point.payload).encode())
        finally:
            await local.close()
    return hits


async def _text(reply: Any) -> Any:
    return {k.decode(): v.decode(errors="replace") for k, v in (await reply).items()}


def poison(
    settings: Settings,
    tenant: str,
    session: str,
    secret: str,
    n: int = 3,
    *,
    message_id: str | None = None,
) -> None:
    """Entries of the session that no projector accepts (an unknown version): dead letters,
    each a message of its own or, with ``message_id``, all copies of that message."""

    async def run() -> None:
        redis = connect(settings.require_redis())
        try:
            partition = partition_for(tenant, session, settings.producer.partitions)
            for i in range(n):
                envelope = {
                    "type": "message.appended",
                    "v": 99,
                    "tenant_id": tenant,
                    "session_id": session,
                    "payload": {
                        "id": message_id or f"poison-{i}",
                        "content": f"poisoned {secret}",
                    },
                }
                await redis.xadd(log_key(partition), {"event": orjson.dumps(envelope)})
        finally:
            await redis.aclose()

    asyncio.run(run())


def run_ok(env: dict[str, str], *args: str) -> Any:
    """The command's JSON report (it succeeded)."""
    return run_ok_typed(env, *args)


@pytest.fixture
def env(fresh: dict[str, str]) -> dict[str, str]:
    return fresh


def projected(env: dict[str, str]) -> None:
    run_ok(env, "project", "start")
    run_ok(env, "project", "wait", "--timeout", "300")


def projected_with_dead_letters(env: dict[str, str], secret: str) -> None:
    """Project, then check that the poisoned entries were dead-lettered and that the secret
    is both in the dead letters and in the stores: what the erase must reach."""
    projected(env)
    letters = json.loads(_amem(env, "dlq", "list", "--json").stdout)
    assert len([x for x in letters if "99" in x["reason"]]) >= 3, letters
    before = asyncio.run(scan(Settings.from_env(env), secret, qdrant=False))
    assert any(place.startswith("redis stream amem:dlq") for place in before), before
    assert any(place.startswith("postgres") for place in before), before


def clean_after_stop(env: dict[str, str], secret: str) -> None:
    run_ok(env, "project", "stop")
    settings = Settings.from_env(env)
    assert asyncio.run(scan(settings, secret)) == {}
    report = run_ok(env, "verify", "--erased")
    assert report["ok"], report


@pytest.mark.timeout(600)
def test_a_session_erased_with_wait_leaves_its_secret_nowhere(
    env: dict[str, str], tmp_path: Path
) -> None:
    secret = f"SECRET-{secrets.token_hex(8)}"
    kept = {"kept-1": talk("nothing"), "kept-2": talk("else")}
    mine = history(tmp_path / "a.jsonl", {"doomed": talk(secret), **kept})
    # The same session id in another tenant, which the erase must not touch.
    theirs = history(tmp_path / "b.jsonl", {"doomed": talk("theirs"), **kept})
    run_ok(env, "import", str(mine), "--tenant", TENANT)
    run_ok(env, "import", str(theirs), "--tenant", OTHER)
    settings = Settings.from_env(env)
    poison(settings, TENANT, "doomed", secret)
    projected_with_dead_letters(env, secret)

    report = run_ok(env, "erase", "--tenant", TENANT, "--session", "doomed", "--wait")
    assert report["done"], report
    assert report["log_files"] == "rewritten"
    assert report["purged"]["log"] >= 12, report
    assert report["purged"]["dead letters"] >= 3, report
    clean_after_stop(env, secret)
    counts = run_ok(env, "verify", "--tenant", OTHER)["projections"]
    assert {row["messages"] for row in counts} == {36}  # the other tenant's doomed too


@pytest.mark.timeout(600)
def test_http_erase_with_wait_and_a_tenant_wide_erase(env: dict[str, str], tmp_path: Path) -> None:
    secret, offboarded = f"SECRET-{secrets.token_hex(8)}", f"GONE-{secrets.token_hex(8)}"
    run_ok(
        env,
        "import",
        str(history(tmp_path / "o.jsonl", {f"s{i}": talk(offboarded, 4) for i in range(5)})),
        "--tenant",
        OTHER,
    )
    projected(env)
    with served(env) as base:
        url = f"{base}/v1/sessions/doomed"
        for text in talk(secret, 6):
            appended = httpx.post(
                f"{url}/messages", json={"messages": [{"role": "user", "content": text}]}
            )
            assert appended.status_code == 201, appended.text
        run_ok(env, "project", "wait", "--timeout", "300")
        erased = httpx.delete(url, params={"wait": "true"}, timeout=60)
        assert erased.status_code == 200, erased.text
        body = erased.json()
        assert body["status"] == "done", body
        assert body["purged"]["log"] == 6
        assert body["log_files"] == "rewritten"

    report = run_ok(env, "erase", "--tenant", OTHER, "--all", "--wait")
    assert report["done"], report
    assert {e["session_id"] for e in report["erased"]} == {f"s{i}" for i in range(5)}
    clean_after_stop(env, secret)
    assert asyncio.run(scan(Settings.from_env(env), offboarded)) == {}


def turns(secret: str, n: int = 8, *, at: int = 3) -> list[dict[str, str]]:
    """A session's messages ``m0``… in which only ``m<at>`` carries the secret."""
    return [
        {
            "id": f"m{i}",
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"The vault code is {secret}, Alice." if i == at else f"Note {i} on Kyoto",
        }
        for i in range(n)
    ]


def chat(path: Path, sessions: dict[str, list[dict[str, str]]]) -> Path:
    path.write_text(
        "".join(json.dumps({"session_id": s, **m}) + "\n" for s, ms in sessions.items() for m in ms)
    )
    return path


def message_counts(env: dict[str, str], tenant: str) -> set[int]:
    """The number of messages each projection holds of the tenant (verify is clean)."""
    report = run_ok(env, "verify", "--tenant", tenant)
    assert report["ok"], report
    return {row["messages"] for row in report["projections"]}


@pytest.mark.timeout(600)
def test_a_message_redacted_with_wait_leaves_its_secret_nowhere_and_the_rest_stays(
    env: dict[str, str], tmp_path: Path
) -> None:
    secret = f"SECRET-{secrets.token_hex(8)}"
    # The same session and message ids in another tenant, which the redaction must not touch.
    mine = chat(tmp_path / "a.jsonl", {"mixed": turns(secret), "kept": turns("nothing")})
    theirs = chat(tmp_path / "b.jsonl", {"mixed": turns("theirs"), "kept": turns("else")})
    run_ok(env, "import", str(mine), "--tenant", TENANT)
    run_ok(env, "import", str(theirs), "--tenant", OTHER)
    settings = Settings.from_env(env)
    poison(settings, TENANT, "mixed", secret, message_id="m3")
    projected_with_dead_letters(env, secret)

    report = run_ok(
        env, "erase", "--tenant", TENANT, "--session", "mixed", "--message", "m3", "--wait"
    )
    assert report["done"], report
    assert report["erased"][0]["message_id"] == "m3", report
    assert report["log_files"] == "rewritten"
    assert report["purged"]["log"] == 4, report  # the message and its three poisoned copies
    assert report["purged"]["enriched stream"] == 1, report
    assert report["purged"]["dead letters"] >= 3, report
    assert report["purged"]["dedup keys"] == 1, report
    clean_after_stop(env, secret)
    residue = run_ok(env, "verify", "--erased")["erased"]
    assert residue == {"sessions": 0, "messages": 1, "residue": {}}, residue
    assert message_counts(env, TENANT) == {15}  # 8 + 8, less the redacted one
    assert message_counts(env, OTHER) == {16}
    context = run_ok(env, "rehydrate", "--tenant", TENANT, "--session", "mixed")
    ids = {item["id"] for item in context["items"]}
    assert "m3" not in ids, context
    assert {"m2", "m4"} <= ids, context


@pytest.mark.timeout(600)
def test_http_redaction_with_wait(env: dict[str, str]) -> None:
    secret = f"SECRET-{secrets.token_hex(8)}"
    run_ok(env, "project", "start")
    with served(env) as base:
        url = f"{base}/v1/sessions/mixed"
        appended = httpx.post(f"{url}/messages", json={"messages": turns(secret, 6)})
        assert appended.status_code == 201, appended.text
        run_ok(env, "project", "wait", "--timeout", "300")
        redacted = httpx.delete(f"{url}/messages/m3", params={"wait": "true"}, timeout=60)
        assert redacted.status_code == 200, redacted.text
        body = redacted.json()
        assert body["status"] == "done", body
        assert body["message_id"] == "m3", body
        assert body["purged"]["log"] == 1, body
        assert body["log_files"] == "rewritten"
        left = httpx.get(f"{url}/messages").json()["messages"]
        assert [m["id"] for m in left] == ["m0", "m1", "m2", "m4", "m5"], left
    clean_after_stop(env, secret)


@contextmanager
def served(env: dict[str, str]) -> Iterator[str]:
    """``amem serve`` on a free port, answering: its base URL."""
    port = free_port()
    server = subprocess.Popen(
        [*AMEM, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/v1/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)


def _wait_until_up(health: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(health, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("amem serve did not answer in 90 s")


def _amem(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AMEM, *args], env=env, capture_output=True, text=True, timeout=120, cwd=REPO, check=True
    )
