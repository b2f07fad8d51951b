"""The pool of worker processes every fault test drives."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stack.emptying import reset_everything
from stack.settings import Settings
from tests.fault.harness import Workers, env_for


@pytest.fixture
async def workers(
    stack_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Workers]:
    """Two workers' worth of processes on an emptied log and stores; a test module's
    ``WORKER_ENV`` adds settings of its own."""
    env = {**env_for(stack_env), **getattr(request.module, "WORKER_ENV", {})}
    await reset_everything(Settings.from_env(env))
    pool = Workers(env, tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()
