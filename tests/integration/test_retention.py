"""Retention end to end: trim under a stopped projector, then rebuild from the archive.

Real worker processes and the embedded services, through the ``amem`` commands a user runs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from logserver import connect
from schemas.constants import group_name, log_key
from stack.projections import build_live_store
from stack.settings import Settings
from tests.integration.test_project_cli import (
    LOCOMO_MESSAGES,
    embedded,
    fresh,
    locomo_projected,
    run_ok,
    verified,
)

__all__ = ["fresh"]  # the fixture, imported to be used here

KEEP = 10
LATER = 200
"""Messages appended while the mongo projector is stopped."""


@pytest.fixture
def env(fresh: dict[str, str]) -> dict[str, str]:
    # Trimming on demand only, so the test decides when it happens.
    return {**fresh, "AMEM_LOG_RETAIN": f"count={KEEP}", "AMEM_LOG_TRIM_INTERVAL_S": "0"}


def later_messages(path: Path) -> Path:
    lines = [
        json.dumps({"session_id": f"later-{i % 40}", "role": "user", "content": f"later note {i}"})
        for i in range(LATER)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def groups(env: dict[str, str], projector: str) -> dict[int, dict[str, object]]:
    status = run_ok(env, "status")
    projectors = status["projectors"]
    assert isinstance(projectors, dict)
    return {
        g["partition"]: g
        for g in projectors["groups"]
        if g["projector"] == projector and g["stream"].startswith("amem:log:")
    }


async def forget(settings: Settings, name: str) -> None:
    """As if ``name`` had never run: an empty store and no consumer group."""
    redis = connect(settings.require_redis())
    try:
        store = await build_live_store(settings, name, redis)
        await store.start()
        await store.reset()
        await store.close()
        for n in range(settings.runtime.partitions):
            await redis.xgroup_destroy(log_key(n), group_name(name))
    finally:
        await redis.aclose()


def replayed(env: dict[str, str], name: str) -> int:
    """Rebuild ``name`` (its next generation, built by the workers); the events replayed."""
    rebuilt = run_ok(env, "project", "rebuild", name)
    assert rebuilt["building"] is None, rebuilt
    assert rebuilt["retiring"] is None, rebuilt
    return int(str(rebuilt["events_applied"]))


@pytest.mark.timeout(900)
def test_a_stopped_projector_pins_the_trim_and_rebuilds_read_the_archive(
    env: dict[str, str], tmp_path: Path
) -> None:
    locomo_projected(env)
    run_ok(env, "project", "stop")

    # mongo stays stopped from here: what it has not acknowledged must stay in the log.
    others = ["enricher", "archive", "postgres", "pgvector", "qdrant", "graph"]
    flags = [x for name in others for x in ("--projector", name)]
    run_ok(env, "import", str(later_messages(tmp_path / "later.jsonl")))
    run_ok(env, "project", "start", *flags)
    run_ok(env, "project", "wait", "--timeout", "400", *flags)
    behind = {n: g for n, g in groups(env, "mongo").items() if g["lag"]}
    assert sum(int(str(g["lag"])) for g in behind.values()) == LATER

    report: Any = run_ok(env, "log", "trim")
    assert report["trimmed"] > 0
    for row in report["streams"]:
        if row["stream"].startswith("amem:log:") and row["partition"] in behind:
            assert row["held_by"] == "amem:mongo", row  # LATER spreads > KEEP a partition
            assert row["hot"] >= behind[row["partition"]]["lag"], row
        elif row["stream"].startswith("amem:enriched:"):
            assert row["hot"] <= KEEP, row  # nothing pins the enriched streams
    # The trimmed log is still the whole log to verify, through the archive.
    total = LOCOMO_MESSAGES + LATER
    report = run_ok(env, "verify", *flags)
    assert report["ok"], report
    assert {row["messages"] for row in report["projections"]} == {total}

    run_ok(env, "project", "stop")
    run_ok(env, "project", "start")  # mongo included: it catches up from where it stopped
    run_ok(env, "project", "wait", "--timeout", "400")
    report = run_ok(env, "log", "trim")
    assert all(row["hot"] <= KEEP for row in report["streams"]), report

    # Every projection rebuilt from a log trimmed to its last KEEP entries per partition:
    # what the streams hold and what the archive holds before them make every message.
    for name in ("postgres", "mongo", "pgvector", "graph", "qdrant"):
        assert replayed(env, name) >= total
    assert set(verified(env).values()) == {total}
    run_ok(env, "project", "stop")
    # A projector new to a trimmed log (mongo, forgotten: its group goes) replays the
    # archive itself when its worker starts.
    asyncio.run(forget(Settings.from_env(env), "mongo"))
    run_ok(env, "project", "start")
    run_ok(env, "project", "wait", "--timeout", "400")
    counts = verified(env)
    assert set(counts.values()) == {total}, counts
    assert embedded(env) == total  # no rebuild embedded anything again
