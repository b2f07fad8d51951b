"""``amem project`` / ``verify`` / ``status`` end to end on LoCoMo, with real worker processes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.emptying import reset_everything
from stack.settings import Settings
from tests.conftest import LOCOMO, REPO
from tests.integration.test_cli import AMEM, amem

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


def locomo_projected(env: dict[str, str], *, start: bool = True) -> None:
    """The LoCoMo import appended, and projected everywhere by workers left running
    (started here by ``amem project start``, unless the caller runs its own)."""
    assert run_ok(env, "import", str(LOCOMO))["appended"] == LOCOMO_MESSAGES
    if start:
        run_ok(env, "project", "start")
    run_ok(env, "project", "wait", "--timeout", "400")


LAUNCHERS = {
    "amem project run": [sys.executable, "-m", "stack.cli", "project", "run"],
    "faststream run": [sys.executable, "-m", "faststream", "run", "stack.worker_app:app"],
}
"""The documented ways to run workers in the foreground (``amem project start`` aside)."""


@pytest.fixture(
    # `amem project start` (with verify and rebuild) is what test_blue_green and
    # test_retention run: the foreground launchers are the ones left to prove here.
    params=[("amem project run", "cluster"), ("faststream run", "embedded-redis")],
    ids=lambda p: f"{p[0]} on {p[1]}",
)
def launched(
    request: pytest.FixtureRequest, stack_env: dict[str, str], tmp_path: Path
) -> Iterator[dict[str, str]]:
    """An empty log and stores, on a single server or a 3-master cluster, and workers run
    in the foreground by a documented launcher (stopped with SIGTERM after)."""
    launcher, server = request.param
    env = dict(stack_env)
    if server == "cluster":
        env["AMEM_REDIS_URL"] = request.getfixturevalue("cluster_url")
    asyncio.run(reset_everything(Settings.from_env(env)))
    with (tmp_path / "workers.log").open("ab") as log:
        workers = subprocess.Popen(LAUNCHERS[launcher], env=env, cwd=REPO, stdout=log, stderr=log)
    try:
        yield env
    finally:
        workers.send_signal(signal.SIGTERM)
        assert workers.wait(90) == 0, (tmp_path / "workers.log").read_text()[-3000:]


def verified(env: dict[str, str]) -> dict[str, int]:
    report = run_ok(env, "verify")
    assert report["ok"], report
    rows = report["projections"]
    assert isinstance(rows, list)
    return {row["projection"]: row["messages"] for row in rows}


@pytest.mark.timeout(600)
def test_locomo_is_projected_everywhere_embedded_once_and_a_rebuild_embeds_nothing(
    launched: dict[str, str],
) -> None:
    """However the workers run, and on one server or a cluster: verify reaches Qdrant's
    local files through the worker that holds them, and the rebuild is done by it."""
    env = launched
    locomo_projected(env, start=False)
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


HOLD_QDRANT = (
    "import sys, time; from qdrant_client import QdrantClient;"
    " client = QdrantClient(path=sys.argv[1]); print('held', flush=True); time.sleep(600)"
)


@pytest.mark.timeout(180)
def test_without_a_worker_verify_rebuild_and_wait_refuse_in_one_line(
    fresh: dict[str, str],
) -> None:
    """No worker runs (however they would be started): what needs one says so, in one line,
    instead of waiting for an answer that cannot come."""
    env = fresh
    run_ok(env, "import", str(REPO / "examples" / "sample-chat.jsonl"))
    # Qdrant's local files held by a process that is no worker (as a stray script would).
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_QDRANT, str(Settings.from_env(env).qdrant_path)],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"held\n"  # the files are locked now
        verify = amem(env, "verify", "--projector", "qdrant", "--json")
        assert verify.returncode != 0
        assert "runs no qdrant worker" in verify.stdout + verify.stderr, verify
    finally:
        holder.kill()
        holder.communicate()  # reaps it and closes its pipe
    # Both wait 30 s for a worker to show up: run them side by side.
    waiting = [
        subprocess.Popen(
            [*AMEM, *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for args in (("project", "wait"), ("project", "rebuild", "postgres"))
    ]
    for proc, needle in zip(
        waiting, ("no worker runs enricher", "no worker runs postgres"), strict=True
    ):
        out, errors = proc.communicate(timeout=120)
        assert proc.returncode == 2, (out, errors)
        lines = [line for line in errors.decode().splitlines() if line.startswith("error:")]
        assert len(lines) == 1, errors
        assert needle in lines[0], errors
