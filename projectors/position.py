"""A place in one log partition: the stream id ``<ms>-<seq>`` of the entry."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.errors import DecodeError


@dataclass(frozen=True, order=True, slots=True)
class Position:
    ms: int
    seq: int

    @classmethod
    def parse(cls, raw: bytes | str) -> Position:
        text = raw.decode() if isinstance(raw, bytes) else raw
        ms, sep, seq = text.partition("-")
        if not sep or not ms.isdigit() or not seq.isdigit():
            raise DecodeError("stream id", f"is not <ms>-<seq>: {text[:40]!r}")
        return cls(int(ms), int(seq))

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"

    @property
    def key(self) -> str:
        """Zero-padded form whose string order is the log order (for stores that compare text)."""
        return f"{self.ms:015d}-{self.seq:010d}"

    @classmethod
    def from_key(cls, key: str) -> Position:
        ms, _, seq = key.partition("-")
        return cls(int(ms), int(seq))


ORIGIN = Position(0, 0)
