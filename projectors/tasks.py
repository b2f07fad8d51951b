"""What the worker's long-running loops share about cancellation."""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Re-raise a cancellation of the current task that a client turned into another error.

    redis-py can turn a cancelled command into a ConnectionError; a loop that retries on
    such errors would then never end, and a worker stopping on an error would wait for it
    for ever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
