"""Request and response bodies of the HTTP API: what ``docs/openapi.json`` publishes.

Limits are the defaults of :mod:`schemas.limits`. The request models state the contract for
clients and reject most bad input early; the producer's own validation still runs on every
message (byte sizes, NUL characters, metadata depth, configured limits), so nothing the log
would refuse gets past either.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, JsonValue

from rehydrator.rehydrate import MAX_BUDGET
from schemas.events import Message
from schemas.limits import DEFAULT_LIMITS, ID_ALPHABET, ID_PATTERN

MAX_MESSAGES = 1000
"""Messages per append request."""
MAX_DEADLINE_MS = 60_000
MAX_RECENT_TURNS = 10_000
MAX_HISTORY = 1000

ID_REGEX = f"^{ID_PATTERN.pattern}$"
ID_RULE = f"1-{DEFAULT_LIMITS.max_id_chars} characters of {ID_ALPHABET}"

Id = Annotated[
    str,
    Field(
        min_length=1, max_length=DEFAULT_LIMITS.max_id_chars, pattern=ID_REGEX, description=ID_RULE
    ),
]
Role = Literal["assistant", "system", "tool", "user"]
Text = Annotated[
    str,
    Field(
        max_length=DEFAULT_LIMITS.max_content_bytes,
        description=(
            f"At most {DEFAULT_LIMITS.max_content_bytes} bytes of UTF-8, no U+0000"
            " (AMEM_MAX_CONTENT_BYTES)."
        ),
    ),
]
Metadata = Annotated[
    dict[str, JsonValue],
    Field(
        description=(
            f"A JSON object of at most {DEFAULT_LIMITS.max_metadata_bytes} bytes as compact JSON,"
            f" nested at most {DEFAULT_LIMITS.max_metadata_depth} deep, finite numbers only."
        ),
    ),
]


def _text_only(value: object) -> object:
    # Lax pydantic reads a number as a Unix time; the schema (and the log) say RFC 3339 text.
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 string with a timezone")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_text_only)]
Count = Annotated[int, Field(strict=True)]
"""An integer as JSON writes one: lax pydantic would also take ``true`` or ``"5"``."""


class _Strict(BaseModel):
    # Unknown fields are refused, not ignored: a "tenant_id" in a body is a mistake to report
    # (the tenant is always the API key's), and so is a misspelt optional field.
    model_config = ConfigDict(extra="forbid")


class MessageIn(_Strict):
    id: Id | None = Field(
        default=None,
        description="Idempotency key within the session: a retry with the same id appends"
        " nothing. Default: a new unique id (a retry then appends twice).",
    )
    role: Role
    content: Text
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=DEFAULT_LIMITS.max_id_chars,
        description="Tool or speaker name.",
    )
    parent_id: Id | None = Field(default=None, description="The message this one replies to.")
    agent_id: Id | None = None
    user_id: Id | None = Field(
        default=None,
        description="The person the memory is about: a rehydrate with scope user reaches"
        " every session of this user in the tenant.",
    )
    created_at: Timestamp | None = Field(
        default=None, description="RFC 3339 with a timezone. Default: when the server took it."
    )
    metadata: Metadata = Field(default_factory=dict)

    def message(self, tenant_id: str, session_id: str) -> Message:
        """The message to append; fields left out take the message's own defaults (a new
        id, the time now)."""
        optional: dict[str, Any] = {}
        if self.id is not None:
            optional["id"] = self.id
        if self.created_at is not None:
            optional["created_at"] = self.created_at
        return Message(
            tenant_id=tenant_id,
            session_id=session_id,
            role=self.role,
            content=self.content,
            name=self.name,
            parent_id=self.parent_id,
            agent_id=self.agent_id,
            user_id=self.user_id,
            metadata=self.metadata,
            **optional,
        )


class AppendIn(_Strict):
    messages: list[MessageIn] = Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description="Appended all or nothing: one invalid message appends none.",
    )


class Appended(BaseModel):
    id: str
    partition: int
    position: str
    """Stream id in the partition; for a duplicate, that of the first append."""
    duplicate: bool


class AppendOut(BaseModel):
    messages: list[Appended] = Field(description="One per message sent, in the same order.")


class RehydrateIn(_Strict):
    query: Text | None = Field(
        default=None, description="What the context is for. Default: the latest user turn."
    )
    budget_tokens: Count = Field(default=2000, ge=1, le=MAX_BUDGET)
    deadline_ms: Count | None = Field(
        default=None,
        ge=1,
        le=MAX_DEADLINE_MS,
        description="Each tier answers within this or is reported degraded."
        " Default: AMEM_REHYDRATE_DEADLINE_MS.",
    )
    recent_turns: Count | None = Field(
        default=None,
        ge=0,
        le=MAX_RECENT_TURNS,
        description="The session's last turns, always included. Default:"
        " AMEM_REHYDRATE_RECENT_TURNS.",
    )
    scope: Literal["session", "user"] = Field(
        default="session",
        description="session: this session's turns; user: also every turn of the same user"
        " in the tenant, all sessions, in one budget.",
    )
    user_id: Id | None = Field(
        default=None,
        description="Whose sessions a user scope reaches. Default: the user the session's"
        " latest turns name (a new, empty session must give it).",
    )


class _MessageFields(BaseModel):
    """A message's own fields: ``rehydrator.context.message_json``."""

    id: str
    role: Role
    content: str
    name: str | None
    parent_id: str | None
    agent_id: str | None
    user_id: str | None
    created_at: AwareDatetime
    metadata: dict[str, JsonValue]


class ItemOut(_MessageFields):
    session_id: str = Field(description="The session the turn is in (a user scope spans many).")
    position: str
    tokens: int
    score: float
    found_by: dict[str, float] = Field(description="Tier → that tier's score for this message.")


class TierOut(BaseModel):
    tier: str
    store: str | None
    status: Literal["ok", "timeout", "error", "skipped"]
    ms: float
    candidates: int
    detail: str | None


class ChatMessageOut(BaseModel):
    role: str
    content: str
    name: str | None = Field(default=None, description="Absent when not a valid OpenAI name.")


class ContextOut(BaseModel):
    """``Context.as_json()``: the packed turns with provenance, and how each tier went."""

    tenant_id: str
    session_id: str
    scope: Literal["session", "user"]
    user_id: str | None = Field(description="Whose sessions a user scope reached.")
    query: str | None
    query_source: Literal["given", "latest user turn", "none"]
    budget_tokens: int
    tokens: int
    header: str | None
    items: list[ItemOut] = Field(
        description="Log order; in a user scope, sessions by time, each in log order."
    )
    tiers: list[TierOut]
    degraded: list[str] = Field(description="Tiers that failed or missed the deadline.")
    watermarks: dict[str, str | None] = Field(
        description="Projector → log position it has applied this session's partition up to."
    )
    from_log_tail: int = Field(description="Items read from the log: not projected yet.")
    elapsed_ms: float = Field(description="From the call to its answer, waiting included.")
    queued_ms: float = Field(
        description="Waiting for a turn: AMEM_REHYDRATE_CONCURRENCY calls run at once."
    )
    messages: list[ChatMessageOut] = Field(description="OpenAI-style chat messages.")
    text: str = Field(description="The header and one line per item.")


class MessageOut(_MessageFields):
    partition: int
    position: str


class HistoryOut(BaseModel):
    messages: list[MessageOut] = Field(description="The session's last messages, in log order.")


class EraseOut(BaseModel):
    session_id: str
    message_id: str | None = Field(default=None, description="The redacted message.")
    partition: int
    position: str = Field(description="Stream id of the session.erased (message.redacted) event.")
    status: Literal["accepted", "done"] = Field(
        description="accepted (202): the erase (redaction) is in the log; done (200, with "
        "?wait=true): every projector applied it and the log server was purged."
    )
    detail: str
    purged: dict[str, int] | None = Field(
        default=None, description="With ?wait=true: what left the log server, per place."
    )
    log_files: str | None = Field(
        default=None, description="With ?wait=true: whether the log server's files were rewritten."
    )


class EraseLeftOut(BaseModel):
    error: str
    left: dict[str, list[str]] = Field(
        description="Per erase or redaction, the consumer groups that had not applied it in time."
    )


class ServiceOut(BaseModel):
    ok: bool
    ms: float | None = Field(description="Round trip of the check; null when it failed.")


class HealthOut(BaseModel):
    status: Literal["ok", "degraded", "down"] = Field(
        description="down (503): the log cannot be reached, nothing can be appended;"
        " degraded: a store is down, rehydrate leaves its tiers out."
    )
    services: dict[str, ServiceOut]


class ErrorOut(BaseModel):
    error: str = Field(description="One line: what was wrong, naming the field and the limit.")
