"""Worker processes in the background (``amem project start|stop``) or the foreground (``run``).

Background workers are recorded in ``$AMEM_HOME/workers.json`` and log to
``$AMEM_HOME/logs/worker-<i>.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from stack.embedded.process import is_alive, spawn, terminate
from stack.projections import select
from stack.settings import Settings
from stack.workers import WORKER_INDEX_VAR, share

WORKERS_FILE = "workers.json"
MARKER = "stack.workers"
"""Part of every worker's command line: guards against pid reuse."""


def _argv() -> list[str]:
    return [sys.executable, "-m", MARKER]


def _env(settings: Settings, names: Sequence[str], index: int, workers: int) -> dict[str, str]:
    # AMEM_HOME from the settings, not only the environment: a caller that built its
    # settings for another home (a benchmark's throw-away stack) gets workers there too.
    env = {
        **os.environ,
        "AMEM_HOME": str(settings.home),
        "AMEM_PROJECTORS": ",".join(names),
        WORKER_INDEX_VAR: str(index),
    }
    if workers > 1:  # several enrichers at two torch threads each would fight over the cores
        env.setdefault("AMEM_EMBED_THREADS", "1")
    return env


def _file(settings: Settings) -> Path:
    return settings.home / WORKERS_FILE


def running(settings: Settings) -> list[int]:
    try:
        pids: list[int] = orjson.loads(_file(settings).read_bytes())
    except FileNotFoundError:
        return []
    return [pid for pid in pids if is_alive(pid, MARKER)]


def start(settings: Settings, names: Sequence[str] | None, workers: int) -> list[int]:
    """Start ``workers`` background processes unless some already run; returns their pids."""
    already = running(settings)
    if already:
        return already
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    plan = share(settings, select(settings, names), workers)
    pids = [
        spawn(_argv(), log=logs / f"worker-{i}.log", env=_env(settings, chosen, i, workers))
        for i, chosen in enumerate(plan)
    ]
    _file(settings).write_bytes(orjson.dumps(pids))
    return pids


def stop(settings: Settings) -> list[int]:
    """SIGTERM every background worker (each finishes its batch), SIGKILL after the timeout."""
    pids = running(settings)
    for pid in pids:
        terminate(pid, MARKER, timeout=settings.runtime.graceful_timeout_s + 5)
    _file(settings).unlink(missing_ok=True)
    return pids


def run(settings: Settings, names: Sequence[str] | None, workers: int) -> int:
    """Run workers in the foreground until they exit; SIGINT/SIGTERM reach every one."""
    plan = share(settings, select(settings, names), workers)
    children = [
        subprocess.Popen(_argv(), env=_env(settings, chosen, i, workers))
        for i, chosen in enumerate(plan)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=abs)
