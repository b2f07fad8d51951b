"""``amem project`` / ``verify`` / ``status`` end to end on LoCoMo, with real worker processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from stack.settings import Settings
from tests.conftest import LOCOMO
from tests.fault.harness import reset_everything
from tests.integration.test_cli import amem

LOCOMO_MESSAGES = 2_760


@pytest.fixture
def fresh(stack_env: dict[str, str]) -> Iterator[dict[str, str]]:
    asyncio.run(reset_everything(Settings.from_env(stack_env)))
    try:
        yield stack_env
    finally:
        amem(stack_env, "project", "stop")


def run_ok(env: dict[str, str], *args: str) -> dict[str, object]:
    result = amem(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    parsed: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def embedded(env: dict[str, str]) -> int:
    status = run_ok(env, "status")
    projectors = status["projectors"]
    assert isinstance(projectors, dict)
    return int(projectors["embedded"])


def locomo_projected(env: dict[str, str]) -> None:
    """The LoCoMo import appended, and projected everywhere by workers left running."""
    assert run_ok(env, "import", str(LOCOMO))["appended"] == LOCOMO_MESSAGES
    run_ok(env, "project", "start")
    run_ok(env, "project", "wait", "--timeout", "400")


def verified(env: dict[str, str]) -> dict[str, int]:
    report = run_ok(env, "verify")
    assert report["ok"], report
    rows = report["projections"]
    assert isinstance(rows, list)
    return {row["projection"]: row["messages"] for row in rows}


@pytest.mark.timeout(600)
def test_locomo_is_projected_everywhere_embedded_once_and_a_rebuild_embeds_nothing(
    fresh: dict[str, str],
) -> None:
    env = fresh
    locomo_projected(env)
    counts = verified(env)
    assert set(counts) >= {"enricher", "postgres", "mongo", "pgvector", "qdrant", "graph"}
    assert set(counts.values()) == {LOCOMO_MESSAGES}
    assert embedded(env) == LOCOMO_MESSAGES

    # Qdrant in local mode belongs to the worker, which builds the new generation itself:
    # the enriched stream, then the whole archive (the stream is not in log order), with
    # the stored vectors. Nothing is embedded again.
    rebuilt = run_ok(env, "project", "rebuild", "qdrant")
    assert rebuilt["live"] == 2, rebuilt
    assert rebuilt["building"] is None, rebuilt
    assert rebuilt["events_applied"] == 2 * LOCOMO_MESSAGES
    assert verified(env)["qdrant"] == LOCOMO_MESSAGES
    assert embedded(env) == LOCOMO_MESSAGES  # the rebuild embedded nothing
