"""Errors of the consuming side, under the one root :class:`schemas.errors.AmemError`."""

from __future__ import annotations

from schemas.errors import AmemError


class ProjectorError(AmemError):
    """Root of projector runtime and store errors."""


class StoreUnavailableError(ProjectorError):
    """The store cannot be reached; the batch is retried in place until it comes back."""

    def __init__(self, store: str, cause: BaseException) -> None:
        self.store = store
        super().__init__(f"{store} is unavailable: {type(cause).__name__}: {cause}")


class ApplyError(ProjectorError):
    """The store refused an entry; after ``max_deliveries`` it is dead-lettered with this."""


class ArchiveError(ProjectorError):
    """The archive cannot give what was asked (a message without the enrichment asked for)."""
