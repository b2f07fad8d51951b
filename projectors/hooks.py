"""Cross-cutting concerns as middleware over one small hook protocol (as dramatiq does).

The runtime calls every hook of every middleware; a middleware implements the ones it needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from projectors.retention import LogState


class Middleware:
    """Hooks the runtime calls; each does nothing unless overridden."""

    def after_startup(self) -> None:
        """The worker consumes."""

    def after_shutdown(self) -> None:
        """The worker stopped consuming."""

    def after_apply(self, projector: str, applied: int, seconds: float) -> None:
        """A batch of ``applied`` records reached the store and was acknowledged."""

    def after_dead_letter(self, projector: str, count: int) -> None:
        """``count`` entries went to the projector's dead-letter stream."""

    def after_retry(self, projector: str, error: BaseException) -> None:
        """The store was unavailable; the batch in hand will be retried."""

    def after_embed(self, texts: int, seconds: float) -> None:
        """The enricher embedded ``texts`` texts."""

    def on_lag(self, projector: str, partition: int, lag: int, pending: int) -> None:
        """Periodic reading of the projector's consumer group on one partition."""

    def after_trim(self, state: LogState) -> None:
        """The streams were trimmed; ``state`` is what they hold now."""


class Hooks(Middleware):
    """Fans every hook out to a list of middleware."""

    def __init__(self, middleware: Sequence[Middleware] = ()) -> None:
        self._middleware = tuple(middleware)

    def after_startup(self) -> None:
        for m in self._middleware:
            m.after_startup()

    def after_shutdown(self) -> None:
        for m in self._middleware:
            m.after_shutdown()

    def after_apply(self, projector: str, applied: int, seconds: float) -> None:
        for m in self._middleware:
            m.after_apply(projector, applied, seconds)

    def after_dead_letter(self, projector: str, count: int) -> None:
        for m in self._middleware:
            m.after_dead_letter(projector, count)

    def after_retry(self, projector: str, error: BaseException) -> None:
        for m in self._middleware:
            m.after_retry(projector, error)

    def after_embed(self, texts: int, seconds: float) -> None:
        for m in self._middleware:
            m.after_embed(texts, seconds)

    def on_lag(self, projector: str, partition: int, lag: int, pending: int) -> None:
        for m in self._middleware:
            m.on_lag(projector, partition, lag, pending)

    def after_trim(self, state: LogState) -> None:
        for m in self._middleware:
            m.after_trim(state)
