"""The typed error tree shared by every layer: one root, :class:`AmemError`."""

from __future__ import annotations


class AmemError(Exception):
    """Root of every error Atomic Memory raises on purpose."""


class ValidationError(AmemError, ValueError):
    """An event or message breaks the contract; names the field, the problem and the limit."""

    def __init__(self, field: str, problem: str, limit: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.limit = limit
        text = f"{field}: {problem}"
        if limit is not None:
            text += f" (limit: {limit})"
        super().__init__(text)


class DecodeError(ValidationError):
    """A stream entry is not a well-formed event (bad JSON, unknown type or version)."""


class ConfigurationError(AmemError):
    """A setting is missing or has a value it cannot take."""
