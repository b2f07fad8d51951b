"""A framework's own object kept whole inside a message, its text readable as the content.

A framework item (an Agents SDK response item, a LangChain message) becomes one
:class:`~schemas.events.Message`: its longest text is the message's content, what the
projections index and the rehydrator packs, and the rest of the item goes into the
metadata under :data:`ORIGINAL`, with the place the text was taken from. Reading puts the
text back: the item comes back equal to what was stored.

An item whose rest does not fit the metadata limits (16 KiB, depth 8 by default) is kept
whole as JSON in the content instead: still exact, only less pleasant to read in a context.
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from schemas.errors import ValidationError
from schemas.events import JSONValue, Message
from schemas.limits import DEFAULT_LIMITS, Limits
from schemas.validation import validate_metadata

ORIGINAL = "amem_original"
"""The metadata field holding the item: ``{"kind", "item", "text_at"}`` or ``{"kind",
"whole": true}`` (the item is the content, as JSON)."""
LABEL_KEYS = frozenset({"type", "role", "status", "id", "call_id", "tool_call_id", "name"})
"""Short labels, never the item's text even when longer than it."""

Path = list[str | int]


def _texts(node: Any, path: Path) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    if isinstance(node, dict):
        for key, child in node.items():
            if isinstance(child, str):
                if key not in LABEL_KEYS:
                    found.append(([*path, key], child))
            else:
                found.extend(_texts(child, [*path, key]))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            if isinstance(child, str):
                found.append(([*path, i], child))
            else:
                found.extend(_texts(child, [*path, i]))
    return found


def _at(node: Any, path: Path) -> Any:
    for step in path[:-1]:
        node = node[step]
    return node


def pack(
    item: dict[str, Any], kind: str, limits: Limits = DEFAULT_LIMITS
) -> tuple[str, dict[str, JSONValue]]:
    """The content and metadata that keep ``item`` (a JSON object) whole.

    Raises :class:`~schemas.errors.ValidationError` when the item is not JSON.
    """
    try:
        copy = orjson.loads(orjson.dumps(item))
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise ValidationError("item", f"is not JSON-serialisable ({exc})") from None
    texts = _texts(copy, [])
    content, text_at = "", None
    if texts:
        text_at, content = max(texts, key=lambda t: len(t[1]))
        _at(copy, text_at)[text_at[-1]] = ""
    metadata: dict[str, JSONValue] = {
        ORIGINAL: {"kind": kind, "item": copy, "text_at": cast(JSONValue, text_at)}
    }
    try:
        validate_metadata(metadata, limits)
    except ValidationError:
        return orjson.dumps(item).decode(), {ORIGINAL: {"kind": kind, "whole": True}}
    return content, metadata


def unpack(message: Message, kind: str) -> dict[str, Any] | None:
    """The item :func:`pack` kept in ``message``; None when the message holds no item of
    ``kind`` (appended by another surface, or by hand)."""
    kept = message.metadata.get(ORIGINAL)
    if not isinstance(kept, dict) or kept.get("kind") != kind:
        return None
    if kept.get("whole") is True:
        whole = orjson.loads(message.content)
        return whole if isinstance(whole, dict) else None
    item = kept.get("item")
    if not isinstance(item, dict):
        return None
    restored: dict[str, Any] = orjson.loads(orjson.dumps(item))
    text_at = kept.get("text_at")
    if isinstance(text_at, list) and text_at:
        _at(restored, cast(Path, text_at))[text_at[-1]] = message.content
    return restored
