"""Every failure of the HTTP API as ``{"error": "<one line>"}``, and the body size bound.

Clients of any language branch on the status and show the line: it names the field and the
limit the way :class:`~schemas.errors.ValidationError` does. Nothing unexpected leaks: a
500 says only that the server logged it.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.errors import DurabilityError, LogUnavailableError
from rehydrator.errors import HistoryUnavailableError, MissingUserError
from schemas.errors import AmemError, ValidationError

MAX_REASON_CHARS = 400
RETRY_AFTER_S = "1"

_log = logging.getLogger("rehydrator.http_errors.Errors")


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` on one printable line: control characters and lone surrogates escaped.

    Reasons quote client input (field names, bad characters), which may hold anything.
    """
    out = []
    for ch in text:
        if ch.isprintable() and unicodedata.category(ch) != "Cs":
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
    line = "".join(out)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def error_response(status: int, reason: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": one_line(reason)}),
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json",
    )


def _where(loc: Sequence[int | str]) -> str:
    """``("body", "messages", 0, "role")`` → ``messages[0].role``."""
    parts = list(loc[1:]) if len(loc) > 1 and loc[0] in ("body", "query", "path") else list(loc)
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def describe(errors: Sequence[Mapping[str, Any]]) -> str:
    """The first of pydantic's errors as ``field: problem``, with how many more there are."""
    if not errors:
        return "request: invalid"
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        position = first["loc"][-1] if first.get("loc") else "?"
        text = f"body: invalid JSON at character {position} ({detail})"
    else:
        msg = str(first.get("msg", "invalid"))
        text = f"{_where(first.get('loc', ()))}: {msg[:1].lower()}{msg[1:]}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more)"
    return text


async def _request_invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, describe(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reason = str(exc.detail)
    if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's 400 for a body it cannot read
        reason = f"body: not UTF-8 ({exc.__cause__.reason} at byte {exc.__cause__.start})"
    return error_response(exc.status_code, reason, exc.headers)


async def _invalid(request: Request, exc: Exception) -> Response:
    return error_response(422, str(exc))


async def _unavailable(request: Request, exc: Exception) -> Response:
    # Both say "try again": a retry with the same message ids appends nothing twice.
    return error_response(503, str(exc), {"Retry-After": RETRY_AFTER_S})


async def _amem_error(request: Request, exc: Exception) -> Response:
    _log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"{type(exc).__name__} (logged on the server)")


class CatchAll:
    """Answers an unexpected exception with a logged 500 in the error format.

    Starlette's own handler for ``Exception`` re-raises after answering, which a server
    logs twice and a test transport raises into the test; this one ends the request here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            _log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise  # too late for another response: the server closes the connection
            await error_response(500, "internal error (logged on the server)")(scope, receive, send)


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` (413) before they are read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        return f"body: over {self.max_bytes} bytes; send fewer messages per request"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(413, self._too_large())(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # a chunked body that does not say its length
                raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, counted, send)


def install(app: FastAPI, *, max_body_bytes: int) -> None:
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ValidationError, _invalid)
    app.add_exception_handler(LogUnavailableError, _unavailable)
    app.add_exception_handler(DurabilityError, _unavailable)
    app.add_exception_handler(HistoryUnavailableError, _unavailable)
    app.add_exception_handler(MissingUserError, _invalid)
    app.add_exception_handler(AmemError, _amem_error)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(CatchAll)
