"""What a projector applies: a validated event, where it sits in the log, and its enrichment."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import orjson

from projectors.position import Position
from schemas.codec import decode
from schemas.constants import ENTRY_FIELD
from schemas.digest import content_hash
from schemas.errors import DecodeError
from schemas.events import Event, MessageAppended, MessageRedacted, SessionErased
from schemas.limits import DEFAULT_LIMITS, Limits

SessionKey = tuple[str, str]
"""``(tenant_id, session_id)``."""

MessageAddress = tuple[str, str, str]
"""``(tenant_id, session_id, message_id)``: a message among every tenant's."""

Digest = dict[SessionKey, dict[str, str]]
"""What ``verify`` compares: per session, message id → content hash."""

K = TypeVar("K")

# Fields of an enriched-stream entry beside ENTRY_FIELD (the log entry's JSON, verbatim).
SOURCE_FIELD = "src"
VECTOR_FIELD = "vec"
TOKENS_FIELD = "tok"
ENTITIES_FIELD = "ent"
MODEL_FIELD = "model"
VECTOR_DTYPE = "<f4"
"""Vectors travel as raw little-endian float32: a quarter of their JSON size."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Enrichment:
    model: str
    vector: Sequence[float]
    tokens: int
    entities: Sequence[str]


@dataclass(frozen=True, kw_only=True, slots=True)
class Record:
    partition: int
    position: Position
    """The entry's place in the log (for enriched entries, the log entry they came from)."""
    event: Event
    raw: bytes
    enrichment: Enrichment | None = None

    @property
    def session(self) -> SessionKey:
        return (self.event.tenant_id, self.event.session_id)

    @property
    def message(self) -> MessageAppended:
        assert isinstance(self.event, MessageAppended), "erasures have no message"
        return self.event

    @property
    def address(self) -> MessageAddress:
        """The message a message record holds, or a redaction record names."""
        event = self.event
        if isinstance(event, MessageAppended):
            return (event.tenant_id, event.session_id, event.message.id)
        assert isinstance(event, MessageRedacted), "a session erase names no message"
        return (event.tenant_id, event.session_id, event.message_id)

    @property
    def content_hash(self) -> str:
        return content_hash(self.message.message.content)


def split(records: Sequence[Record]) -> tuple[list[Record], list[Record], list[Record]]:
    """Messages, session erasures and redactions of a batch, each in log order."""
    messages = [r for r in records if isinstance(r.event, MessageAppended)]
    erasures = [r for r in records if isinstance(r.event, SessionErased)]
    redactions = [r for r in records if isinstance(r.event, MessageRedacted)]
    return messages, erasures, redactions


def _furthest(records: Sequence[Record], key: Callable[[Record], K]) -> dict[K, Position]:
    out: dict[K, Position] = {}
    for record in records:
        if record.position > out.get(key(record), Position(-1, -1)):
            out[key(record)] = record.position
    return out


def latest_erasures(erasures: Sequence[Record]) -> dict[SessionKey, Position]:
    """The furthest erase position per session in a batch."""
    return _furthest(erasures, lambda r: r.session)


def latest_redactions(redactions: Sequence[Record]) -> dict[MessageAddress, Position]:
    """The furthest redaction position per message in a batch."""
    return _furthest(redactions, lambda r: r.address)


def _field(fields: Mapping[bytes, bytes], name: str) -> bytes:
    value = fields.get(name.encode())
    if value is None:
        raise DecodeError(name, "is missing from the stream entry")
    return value


def record_from_log(
    partition: int, entry_id: bytes, fields: Mapping[bytes, bytes], limits: Limits = DEFAULT_LIMITS
) -> Record:
    """Decode and validate one log entry; raises :class:`DecodeError` naming what is wrong."""
    raw = _field(fields, ENTRY_FIELD)
    event = decode(raw, limits)
    return Record(partition=partition, position=Position.parse(entry_id), event=event, raw=raw)


def record_from_enriched(
    partition: int, fields: Mapping[bytes, bytes], limits: Limits = DEFAULT_LIMITS
) -> Record:
    """Decode one enriched-stream entry (the enricher wrote it: only a bug makes it fail)."""
    raw = _field(fields, ENTRY_FIELD)
    event = decode(raw, limits)
    position = Position.parse(_field(fields, SOURCE_FIELD))
    enrichment = None
    if isinstance(event, MessageAppended):
        vector = np.frombuffer(_field(fields, VECTOR_FIELD), dtype=VECTOR_DTYPE).tolist()
        enrichment = Enrichment(
            model=_field(fields, MODEL_FIELD).decode(),
            vector=vector,
            tokens=int(_field(fields, TOKENS_FIELD)),
            entities=orjson.loads(_field(fields, ENTITIES_FIELD)),
        )
    return Record(
        partition=partition, position=position, event=event, raw=raw, enrichment=enrichment
    )
