"""Errors of the read side, under :class:`schemas.errors.AmemError`."""

from __future__ import annotations

from schemas.errors import AmemError


class RehydratorError(AmemError):
    """A read could not be answered at all (a degraded tier is reported, never raised)."""


class HistoryUnavailableError(RehydratorError):
    """Neither the history store nor the log answered: the session's messages are unknown,
    which is not the same as a session without messages."""


class MissingUserError(RehydratorError, ValueError):
    """A user scope was asked without a user, and the session's turns name none."""
