"""Import existing histories: chat JSON/JSONL (OpenAI-style) and the LoCoMo format.

Message ids are derived from the source (the record's own ``id``, LoCoMo's ``dia_id``, or
the message's ordinal within its session), so importing a file twice appends nothing the
second time. A record that cannot be imported is reported with its reason and never stops
the others.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from producer.producer import Producer
from schemas.errors import ValidationError
from schemas.events import Message
from schemas.limits import DEFAULT_LIMITS, Limits
from schemas.validation import validate_message

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._:@/-]+")
_LOCOMO_SESSION = re.compile(r"session_(\d+)")
_LOCOMO_DATE_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y")
_CHAT_FIELDS = {"id", "role", "content", "session_id", "parent_id", "agent_id", "name", "user_id"}
_TIME_FIELDS = ("created_at", "timestamp")


@dataclass(frozen=True, slots=True)
class Rejected:
    source: str
    """Where the record is: ``file:line`` for JSONL, ``file#index`` or a LoCoMo path."""
    reason: str


@dataclass(slots=True)
class ImportReport:
    appended: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    sessions: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "appended": self.appended,
            "duplicates": self.duplicates,
            "rejected": len(self.rejected),
            "sessions": self.sessions,
            "rejections": [{"source": r.source, "reason": r.reason} for r in self.rejected],
        }


Record = Message | Rejected
_Parsed = tuple[str, Message | str]
"""A record's source and either its message or the reason it cannot be one."""


def session_from_name(name: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """A valid session id from a file name: unsafe characters become ``-``."""
    cleaned = _UNSAFE_ID_CHARS.sub("-", name).strip("-") or "session"
    return cleaned[: limits.max_id_chars]


def read_history(path: Path, tenant_id: str, limits: Limits = DEFAULT_LIMITS) -> list[Record]:
    """Every record of ``path`` as a validated message or a rejection, in source order."""
    default_session = session_from_name(path.stem, limits)
    if path.suffix == ".jsonl":
        parsed = list(_jsonl(path, tenant_id, default_session))
    else:
        try:
            document = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            return [Rejected(path.name, f"not valid JSON: {exc}")]
        parsed = list(_json_document(document, path.name, tenant_id, default_session))
    return [_checked(source, item, limits) for source, item in parsed]


def _checked(source: str, item: Message | str, limits: Limits) -> Record:
    if isinstance(item, str):
        return Rejected(source, item)
    try:
        return validate_message(item, limits)
    except ValidationError as exc:
        return Rejected(source, str(exc))


def _jsonl(path: Path, tenant_id: str, default_session: str) -> Iterator[_Parsed]:
    ordinals: Counter[str] = Counter()
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            source = f"{path.name}:{number}"
            try:
                raw = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield source, f"not valid JSON: {exc}"
                continue
            yield source, _chat_record(raw, tenant_id, default_session, ordinals)


def _json_document(
    document: Any, name: str, tenant_id: str, default_session: str
) -> Iterator[_Parsed]:
    if isinstance(document, dict):
        document = [document]
    if not isinstance(document, list):
        yield name, "expected a JSON list or object at the top level"
        return
    ordinals: Counter[str] = Counter()
    for index, item in enumerate(document):
        source = f"{name}#{index}"
        if isinstance(item, dict) and "conversation" in item and "sample_id" in item:
            yield from _locomo_sample(item, source, tenant_id)
        elif isinstance(item, dict) and isinstance(item.get("messages"), list):
            session = item.get("session_id", default_session)
            shared = {"session_id": session}
            if "user_id" in item:
                shared["user_id"] = item["user_id"]
            for n, message in enumerate(item["messages"]):
                if isinstance(message, dict):
                    message = {**shared, **message}
                where = f"{source}.messages[{n}]"
                yield where, _chat_record(message, tenant_id, default_session, ordinals)
        else:
            yield source, _chat_record(item, tenant_id, default_session, ordinals)


def _chat_record(
    raw: Any, tenant_id: str, default_session: str, ordinals: Counter[str]
) -> Message | str:
    if not isinstance(raw, dict):
        return f"expected a JSON object, got {type(raw).__name__}"
    for required in ("role", "content"):
        if required not in raw:
            return f"{required}: is missing"
    session = raw.get("session_id", default_session)
    if not isinstance(session, str):
        return "session_id: must be a string"
    ordinals[session] += 1
    content = _text_content(raw["content"])
    if content is None:
        return "content: must be a string or a list of text parts"
    try:
        created = _timestamp(raw)
    except ValueError as exc:
        return str(exc)
    metadata = {k: v for k, v in raw.items() if k not in _CHAT_FIELDS and k not in _TIME_FIELDS}
    return Message(
        tenant_id=tenant_id,
        session_id=session,
        id=str(raw.get("id", f"m{ordinals[session]}")),
        role=raw["role"],
        content=content,
        parent_id=raw.get("parent_id"),
        agent_id=raw.get("agent_id"),
        name=raw.get("name"),
        user_id=raw.get("user_id"),
        created_at=created,
        metadata=metadata,
    )


def _text_content(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list) and all(
        isinstance(part, dict) and isinstance(part.get("text"), str) for part in content
    ):
        return "\n".join(part["text"] for part in content)
    return None


def _timestamp(raw: dict[str, Any]) -> datetime:
    for name in _TIME_FIELDS:
        value = raw.get(name)
        if value is None:
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{name}: is not an ISO 8601 timestamp: {value[:40]!r}") from None
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        raise ValueError(f"{name}: must be an ISO 8601 string or epoch seconds")
    return datetime.now(UTC)


def _locomo_sample(item: dict[str, Any], source: str, tenant_id: str) -> Iterator[_Parsed]:
    """One LoCoMo conversation = one session, of a user of the same id (the conversation is
    the memory of that pair of speakers); turns keep their ``dia_id`` as message id."""
    conversation = item["conversation"]
    session_id = str(item["sample_id"])
    roles = {conversation.get("speaker_a"): "user", conversation.get("speaker_b"): "assistant"}
    numbered = sorted(
        (int(m.group(1)), key)
        for key in conversation
        if (m := _LOCOMO_SESSION.fullmatch(key)) is not None
    )
    for number, key in numbered:
        date_text = conversation.get(f"{key}_date_time", "")
        started = _locomo_date(date_text)
        for n, turn in enumerate(conversation[key]):
            where = f"{source}.{key}[{n}]"
            if not isinstance(turn, dict) or "dia_id" not in turn or "text" not in turn:
                yield where, "a LoCoMo turn needs dia_id and text"
                continue
            extra = _locomo_extras(turn)
            yield (
                where,
                Message(
                    tenant_id=tenant_id,
                    session_id=session_id,
                    id=str(turn["dia_id"]),
                    role=roles.get(turn.get("speaker"), "user"),
                    content=turn["text"],
                    name=turn.get("speaker"),
                    user_id=session_id,
                    # Turns carry no time of their own: one second apart keeps them ordered.
                    created_at=started + timedelta(seconds=n),
                    metadata={"session": number, "session_date": date_text, **extra},
                ),
            )


def _locomo_extras(turn: dict[str, Any]) -> dict[str, Any]:
    """A turn's other fields as metadata, minus inline images.

    Some turns inline a whole JPEG as a ``data:`` URL; memory keeps the caption (what a
    model can use) and drops the bytes, recording how many were dropped.
    """
    extra = {k: v for k, v in turn.items() if k not in ("speaker", "text", "dia_id")}
    urls = extra.get("img_url")
    if isinstance(urls, list):
        kept = [u for u in urls if not (isinstance(u, str) and u.startswith("data:"))]
        if len(kept) < len(urls):
            extra["img_url"] = kept
            extra["inline_images_dropped"] = len(urls) - len(kept)
    return extra


def _locomo_date(text: str) -> datetime:
    for fmt in _LOCOMO_DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return datetime(1970, 1, 1, tzinfo=UTC)


async def import_records(
    producer: Producer,
    records: list[Record],
    *,
    batch: int = 500,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Append the valid records in pipelined batches; ``progress`` gets each batch's size."""
    report = ImportReport(rejected=[r for r in records if isinstance(r, Rejected)])
    messages = [r for r in records if isinstance(r, Message)]
    report.sessions = len({(m.tenant_id, m.session_id) for m in messages})
    for start in range(0, len(messages), batch):
        chunk = messages[start : start + batch]
        for result in await producer.append_many(chunk):
            if result.duplicate:
                report.duplicates += 1
            else:
                report.appended += 1
        if progress is not None:
            progress(len(chunk))
    return report
