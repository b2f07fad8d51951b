"""Build projector records for store tests without a log: positions are given, not read."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta

from projectors.position import Position
from projectors.records import Enrichment, Record
from schemas.codec import encode
from schemas.events import Message, MessageAppended, MessageRedacted, SessionErased

DIM = 384
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
MODEL = "test-model"


def fake_vector(text: str) -> list[float]:
    """A deterministic unit vector per text: equal texts meet, different ones rarely do."""
    seed = hashlib.sha256(text.encode()).digest()
    raw = [((seed[i % 32] * (i + 7)) % 251) / 251.0 - 0.5 for i in range(DIM)]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


def message(
    tenant: str,
    session: str,
    ident: str,
    content: str,
    pos: int,
    *,
    role: str = "user",
    name: str | None = None,
    parent_id: str | None = None,
    entities: tuple[str, ...] = (),
    partition: int = 0,
    user_id: str | None = None,
) -> Record:
    msg = Message(
        tenant_id=tenant,
        session_id=session,
        id=ident,
        role=role,
        content=content,
        name=name,
        parent_id=parent_id,
        user_id=user_id,
        created_at=BASE_TIME + timedelta(seconds=pos),
    )
    event = MessageAppended(message=msg, event_id=f"e-{tenant}-{session}-{ident}")
    return Record(
        partition=partition,
        position=Position(1_000 + pos, 0),
        event=event,
        raw=encode(event),
        enrichment=Enrichment(
            model=MODEL,
            vector=fake_vector(content),
            tokens=len(content.split()),
            entities=entities,
        ),
    )


def erase(tenant: str, session: str, pos: int, *, partition: int = 0) -> Record:
    event = SessionErased(tenant_id=tenant, session_id=session, event_id=f"x-{session}-{pos}")
    return Record(
        partition=partition, position=Position(1_000 + pos, 0), event=event, raw=encode(event)
    )


def redact(tenant: str, session: str, ident: str, pos: int, *, partition: int = 0) -> Record:
    event = MessageRedacted(
        tenant_id=tenant, session_id=session, message_id=ident, event_id=f"r-{ident}-{pos}"
    )
    return Record(
        partition=partition, position=Position(1_000 + pos, 0), event=event, raw=encode(event)
    )


def conversation(
    tenant: str, session: str, n: int = 6, *, start: int = 0, user_id: str | None = None
) -> list[Record]:
    """Alternating turns that reply to each other and mention a few shared entities."""
    people = ("Alice", "Bob")
    topics = ("Paris", "Berlin", "Lisbon")
    records = []
    for i in range(n):
        topic = topics[i % len(topics)]
        records.append(
            message(
                tenant,
                session,
                f"m{start + i}",
                f"{people[i % 2]} talks about {topic} in turn {start + i}",
                start + i,
                role="user" if i % 2 == 0 else "assistant",
                name=people[i % 2],
                parent_id=f"m{start + i - 1}" if i else None,
                entities=(topic, people[i % 2]),
                user_id=user_id,
            )
        )
    return records
