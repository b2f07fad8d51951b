"""Projector worker processes: one FastStream app per process, any number of processes.

``amem project run --workers N`` starts N processes of ``python -m stack.workers``. In the
embedded default Qdrant runs in local mode, which one process at a time may open: only the
first worker runs the ``qdrant`` projector, the others run every other projector.
"""

from __future__ import annotations

import asyncio
import faulthandler
import io
import logging
import os
import signal
import sys
from collections.abc import Sequence
from functools import partial

from projectors.metrics import PrometheusMiddleware
from projectors.runtime import Worker
from rehydrator.erase import purge_ready
from stack.projections import build_projector, qdrant_is_local, select
from stack.rebuilding import backfill, fill_generation
from stack.settings import Settings

WORKER_INDEX_VAR = "AMEM_WORKER_INDEX"
TEARDOWN_S = 10.0
"""How long a stopped worker waits for its leftover tasks to end before it exits anyway."""
_log = logging.getLogger("stack.workers")


def share(settings: Settings, names: Sequence[str], workers: int) -> list[tuple[str, ...]]:
    """The projectors each of ``workers`` processes runs."""
    shared = tuple(n for n in names if not (n == "qdrant" and qdrant_is_local(settings)))
    return [tuple(names) if i == 0 else shared for i in range(workers)]


def build_worker(settings: Settings, names: Sequence[str] | None = None) -> Worker:
    index = int(os.environ.get(WORKER_INDEX_VAR, "0"))
    # One port per process: the base port + the worker's index.
    metrics = PrometheusMiddleware(
        port=settings.metrics_port + index if settings.metrics_port else 0
    )
    projectors = [build_projector(settings, n, metrics) for n in select(settings, names)]
    return Worker(
        redis_url=settings.require_redis(),
        projectors=projectors,
        settings=settings.runtime,
        middleware=[metrics],
        each_round=partial(purge_ready, partitions=settings.runtime.partitions),
        backfill=partial(backfill, settings),
        rebuild=partial(fill_generation, settings),
    )


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("AMEM_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    # `kill -USR1 <pid>` prints every thread's stack to stderr: a stuck worker explains itself.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    worker = build_worker(Settings.from_env())
    runner = asyncio.Runner()
    failed = False
    try:
        runner.run(worker.app.run())
    except Exception:
        _log.exception("the worker stopped on an error")
        failed = True
    if not runner.run(_cancel_leftovers(TEARDOWN_S)):
        # A worker must exit for its supervisor to restart it, even when a task it leaves
        # behind ignores cancellation (the runner's close would wait for it forever); the
        # OS releases whatever the process held.
        logging.shutdown()
        os._exit(1)
    runner.close()
    if failed:
        sys.exit(1)


async def _cancel_leftovers(seconds: float) -> bool:
    """Cancel every other task; False, with the stack of each, if some outlive ``seconds``."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    if not others:
        return True
    _, stuck = await asyncio.wait(others, timeout=seconds)
    for task in stuck:
        stack = io.StringIO()
        task.print_stack(file=stack)
        _log.error("task %s ignored its cancellation:\n%s", task.get_name(), stack.getvalue())
    return not stuck


if __name__ == "__main__":
    main()
