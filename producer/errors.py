"""Errors of the append path, all under :class:`schemas.errors.AmemError`."""

from __future__ import annotations

from schemas.errors import AmemError


class ProducerError(AmemError):
    """The log refused or could not take an append."""


class LogUnavailableError(ProducerError):
    """The log server could not be reached, even after reconnecting with backoff."""


class DurabilityError(ProducerError):
    """``fsync`` durability was asked for and the server did not confirm it.

    The entry may be in the log: retrying the same message id is safe and appends nothing
    twice.
    """


class PartitionMismatchError(ProducerError):
    """The producer's partition count differs from the one recorded in the log server."""
