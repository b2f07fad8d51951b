"""What ``rehydrate`` returns: the packed messages with their provenance, and how it went.

Items are in log order (invariant 4). Each carries the tiers that found it with that tier's
score, so an agent (or an operator reading ``amem rehydrate``) can see why it is there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from projectors.position import Position
from projectors.store import StoredMessage
from schemas.events import Message

TierStatus = Literal["ok", "timeout", "error", "skipped"]
QuerySource = Literal["given", "latest user turn", "none"]

CAPTION_FIELD = "blip_caption"
"""Metadata field of an image's caption (LoCoMo's, kept by the importer): rendered inline."""

_OPENAI_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def render(message: Message) -> str:
    """A message as one line of context: ``<speaker>: <text>`` plus its image caption.

    This is also the text whose tokens count against the budget, the way
    ``../shared/data/README.md`` counts LoCoMo turns.
    """
    text = f"{message.name or message.role}: {message.content}"
    caption = message.metadata.get(CAPTION_FIELD)
    if isinstance(caption, str) and caption:
        text += f" [image: {caption}]"
    return text


def message_json(m: Message) -> dict[str, Any]:
    """A message's own fields as JSON (those of the wire format, tenant and session aside)."""
    return {
        "id": m.id,
        "role": m.role,
        "content": m.content,
        "name": m.name,
        "parent_id": m.parent_id,
        "agent_id": m.agent_id,
        "user_id": m.user_id,
        "created_at": m.created_at.isoformat(),
        "metadata": dict(m.metadata),
    }


def stored_json(s: StoredMessage) -> dict[str, Any]:
    """A message read back, as JSON: its own fields and where it is in the log."""
    return {**message_json(s.message), "partition": s.partition, "position": str(s.position)}


@dataclass(frozen=True, kw_only=True, slots=True)
class Item:
    """One packed turn: the message, its place in its session, and who found it."""

    message: Message
    position: Position
    text: str
    """:func:`render` of the message."""
    tokens: int
    """Word pieces of :attr:`text`, [CLS] and [SEP] included."""
    score: float
    """Fused relevance (the recent window and the log tail rank above any score)."""
    found_by: Mapping[str, float]
    """Tier → that tier's own score for this message."""

    @property
    def key(self) -> tuple[str, str]:
        """``(session_id, message_id)``."""
        return (self.message.session_id, self.message.id)

    def as_json(self) -> dict[str, Any]:
        return {
            "session_id": self.message.session_id,
            **message_json(self.message),
            "position": str(self.position),
            "tokens": self.tokens,
            "score": round(self.score, 6),
            "found_by": {tier: round(s, 6) for tier, s in self.found_by.items()},
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class TierReport:
    """How one tier's read went."""

    tier: str
    """``log``, ``recent``, ``session``, ``memory``, ``embedding``, ``dense``, ``lexical``,
    ``window``, ``graph`` or ``messages``."""
    store: str | None
    """The store that answered (for hedged tiers, the first good one)."""
    status: TierStatus
    ms: float
    candidates: int = 0
    detail: str | None = None
    """Why the tier is degraded, or which hedge won."""

    def as_json(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "store": self.store,
            "status": self.status,
            "ms": round(self.ms, 3),
            "candidates": self.candidates,
            "detail": self.detail,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class Context:
    """A rehydrated context: the packed turns, the header, and how every tier answered."""

    tenant_id: str
    session_id: str
    scope: Literal["session", "user"]
    user_id: str | None
    """The user whose sessions a ``user`` scope reached (None in a session scope)."""
    query: str | None
    query_source: QuerySource
    budget_tokens: int
    tokens: int
    """Tokens used: the items' plus the session header's."""
    items: tuple[Item, ...]
    """Log order; in a user scope, sessions by time (their earliest item), each in log order."""
    header: str | None
    """One line about the session (participants, span, size) from the session document."""
    tiers: tuple[TierReport, ...]
    watermarks: Mapping[str, Position | None]
    """Projector → position of the session's partition up to which it has applied the log."""
    from_log_tail: int
    """Items read from the log because no projection had them yet (read-your-writes)."""
    elapsed_ms: float
    """From the call to its answer, waiting for its turn included."""
    queued_ms: float = 0.0
    """Waiting for a turn (``RehydrateSettings.concurrency`` calls run at once)."""

    @property
    def degraded(self) -> tuple[str, ...]:
        """Tiers that did not answer in time or failed."""
        return tuple(dict.fromkeys(t.tier for t in self.tiers if t.status in ("timeout", "error")))

    def to_messages(self) -> list[dict[str, str]]:
        """OpenAI-style chat messages: the header as a system message, then the items."""
        out: list[dict[str, str]] = []
        if self.header:
            out.append({"role": "system", "content": self.header})
        for item in self.items:
            m = item.message
            message = {"role": m.role, "content": m.content}
            if m.name and _OPENAI_NAME.match(m.name):
                message["name"] = m.name
            out.append(message)
        return out

    def to_text(self) -> str:
        """The header and one rendered line per item, in log order."""
        lines = [self.header] if self.header else []
        lines.extend(item.text for item in self.items)
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "session_id": self.session_id,
            "scope": self.scope,
            "user_id": self.user_id,
            "query": self.query,
            "query_source": self.query_source,
            "budget_tokens": self.budget_tokens,
            "tokens": self.tokens,
            "header": self.header,
            "items": [item.as_json() for item in self.items],
            "tiers": [t.as_json() for t in self.tiers],
            "degraded": list(self.degraded),
            "watermarks": {p: (str(w) if w else None) for p, w in self.watermarks.items()},
            "from_log_tail": self.from_log_tail,
            "elapsed_ms": round(self.elapsed_ms, 3),
            "queued_ms": round(self.queued_ms, 3),
            "messages": self.to_messages(),
            "text": self.to_text(),
        }
