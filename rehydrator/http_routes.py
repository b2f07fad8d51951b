"""The routes of the HTTP API and what they depend on: the tenant, the open services.

The tenant of a request is always its API key's, never a field of the path or the body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from producer import Producer
from projectors.position import Position
from rehydrator.context import stored_json
from rehydrator.erase import Erasure, wait_and_purge
from rehydrator.http_keys import ApiKeys
from rehydrator.http_models import (
    ID_REGEX,
    ID_RULE,
    MAX_HISTORY,
    Appended,
    AppendIn,
    AppendOut,
    ContextOut,
    EraseLeftOut,
    EraseOut,
    ErrorOut,
    HealthOut,
    HistoryOut,
    RehydrateIn,
    ServiceOut,
)
from rehydrator.http_paths import CONVERTOR
from rehydrator.rehydrate import Rehydrator
from schemas.events import SessionErased
from schemas.limits import DEFAULT_LIMITS
from schemas.validation import validate_content

HEALTH_TTL_S = 1.0
"""Health answers are reused this long: the route needs no key, so it must stay cheap."""
LOG_SERVICE = "redis"
"""The service without which nothing can be appended: health is 503 when it is down."""
HISTORY_DEADLINE_MS = 2000
"""``GET …/messages`` reads the log, not a latency-bound context: give it time to be whole."""
ERASE_TIMEOUT = "the erase is in the log but not applied everywhere in time; it goes on"
ERASE_DONE = (
    "every projector applied the erase, and the session's entries, dead letters and dedup"
    " keys left the log server"
)
ERASE_DETAIL = (
    "the erase is in the log: reads through this API stop returning the session's earlier"
    " messages at once; projectors delete them from each store asynchronously"
)
REDACT_TIMEOUT = "the redaction is in the log but not applied everywhere in time; it goes on"
REDACT_DONE = (
    "every projector applied the redaction, and the message's entries, dead letters and dedup"
    " key left the log server"
)
REDACT_DETAIL = (
    "the redaction is in the log: reads through this API stop returning the message at once;"
    " projectors delete it from each store asynchronously"
)

SESSION = f"/sessions/{{session_id:{CONVERTOR}}}"
"""A session's path: its id one segment, "/" sent as %2F (:mod:`rehydrator.http_paths`)."""

HealthCheck = Callable[[], Awaitable[Mapping[str, ServiceOut]]]


@dataclass(frozen=True, slots=True)
class Opened:
    """What the app holds open between its start and its shutdown."""

    producer: Producer
    rehydrator: Rehydrator


SessionId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=DEFAULT_LIMITS.max_id_chars,
        pattern=ID_REGEX,
        description=f"{ID_RULE}; a '/' is sent percent-encoded, as %2F.",
    ),
]
MessageId = SessionId
"""A message id in a path: the same rule as a session id."""
Reason = Annotated[
    str | None,
    Query(max_length=1024, description="Why; kept in the log with the erase (redaction)."),
]
Wait = Annotated[
    bool,
    Query(
        description="Return once every projector applied the erase (redaction) and the log "
        "server is purged (at most AMEM_ERASE_WAIT_S, 30 s by default; then 504 naming what "
        "is left)."
    ),
]
_ERROR_TEXT = {
    400: "Body is not JSON in UTF-8.",
    401: "No API key, or one that is not known.",
    413: "Body over the size limit.",
    422: "Invalid input, named with its limit.",
    503: "The log cannot be reached; retry.",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorOut, "description": _ERROR_TEXT[s]} for s in statuses}


_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The key itself.")


def _json(content: object, status: int = 200) -> Response:
    # Contexts and histories can be large: orjson, and no second pass through pydantic.
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


class HealthCache:
    """The last health answer, reused for :data:`HEALTH_TTL_S`, one check at a time."""

    def __init__(self, check: HealthCheck) -> None:
        self._check = check
        self._lock = asyncio.Lock()
        self._at = float("-inf")
        self._last: Mapping[str, ServiceOut] = {}

    async def services(self) -> Mapping[str, ServiceOut]:
        async with self._lock:
            if time.monotonic() - self._at > HEALTH_TTL_S:
                self._last = await self._check()
                self._at = time.monotonic()
            return self._last


@dataclass(frozen=True, slots=True)
class AppState:
    """What one app's routes share: its keys and health cache, and what its lifespan opened."""

    keys: ApiKeys
    health: HealthCache
    open: list[Opened]
    """Empty until the lifespan has started (and again after it ended)."""
    erase_wait_s: float = 30.0
    """How long ``DELETE …?wait=true`` waits before its 504."""


def _state(request: Request) -> AppState:
    state = request.app.state.amem
    assert isinstance(state, AppState)
    return state


def _opened(request: Request) -> Opened:
    opened = _state(request).open
    if not opened:
        raise HTTPException(503, "starting up or shutting down", {"Retry-After": "1"})
    return opened[0]


async def _tenant(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> str:
    given = bearer.credentials if bearer is not None else None
    if given is not None and api_key is not None and given != api_key:
        raise HTTPException(401, "Authorization and X-API-Key name different keys")
    found = _state(request).keys.tenant_for(given or api_key)
    if found is None:
        problem = "unknown API key" if given or api_key else "no API key"
        raise HTTPException(
            401,
            f"{problem}: send Authorization: Bearer <key> or X-API-Key: <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return found


Tenant = Annotated[str, Depends(_tenant)]
Services = Annotated[Opened, Depends(_opened)]
v1 = APIRouter(prefix="/v1")


@v1.post(
    f"{SESSION}/messages",
    status_code=201,
    summary="Append messages",
    operation_id="appendMessages",
    responses=_errors(400, 401, 413, 422, 503),
)
async def append(
    session_id: SessionId, body: AppendIn, tenant_id: Tenant, services: Services
) -> AppendOut:
    """Append one or many messages, all or nothing, idempotently per message id.

    Acknowledged means in the log: readable at once through this API, projected into the
    stores asynchronously.
    """
    messages = [m.message(tenant_id, session_id) for m in body.messages]
    results = await services.producer.append_many(messages)
    return AppendOut(
        messages=[
            Appended(id=m.id, partition=r.partition, position=r.stream_id, duplicate=r.duplicate)
            for m, r in zip(messages, results, strict=True)
        ]
    )


@v1.post(
    f"{SESSION}/rehydrate",
    response_model=ContextOut,
    summary="Rehydrate a session's context",
    operation_id="rehydrate",
    responses=_errors(400, 401, 413, 422, 503),
)
async def rehydrate(
    session_id: SessionId,
    tenant_id: Tenant,
    services: Services,
    body: Annotated[RehydrateIn | None, Body()] = None,
) -> Response:
    """The context to resume the session with, packed to the token budget.

    A tier that fails or misses the deadline is left out and listed in ``degraded``;
    messages not projected yet come from the log (``from_log_tail``).
    """
    asked = body or RehydrateIn()
    if asked.query is not None:
        validate_content(asked.query, field="query")  # NUL, bytes: as a message's content
    context = await services.rehydrator.rehydrate(
        tenant_id,
        session_id,
        asked.query,
        asked.budget_tokens,
        scope=asked.scope,
        user_id=asked.user_id,
        deadline_ms=asked.deadline_ms,
        recent_turns=asked.recent_turns,
    )
    return _json(context.as_json())


@v1.get(
    f"{SESSION}/messages",
    response_model=HistoryOut,
    summary="Read a session's messages",
    operation_id="readMessages",
    responses=_errors(401, 422, 503),
)
async def messages(
    session_id: SessionId,
    tenant_id: Tenant,
    services: Services,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY, description="The last this many.")] = 100,
) -> Response:
    """The session's last messages in log order, including those not projected yet."""
    found = await services.rehydrator.history(
        tenant_id, session_id, limit=limit, deadline_ms=HISTORY_DEADLINE_MS
    )
    return _json({"messages": [stored_json(s) for s in found]})


@v1.delete(
    SESSION,
    status_code=202,
    response_model=EraseOut,
    response_model_exclude_none=True,
    summary="Erase a session",
    operation_id="eraseSession",
    responses={
        200: {"model": EraseOut, "description": "With ?wait=true: erased everywhere."},
        **_errors(401, 422, 503),
        504: {"model": EraseLeftOut, "description": ERASE_TIMEOUT},
    },
)
async def erase(
    request: Request,
    session_id: SessionId,
    tenant_id: Tenant,
    services: Services,
    reason: Reason = None,
    wait: Wait = False,
) -> Response:
    """Erase the session's messages so far; later appends start it afresh.

    Accepted means the erase is in the log: reads through this API hide the erased
    messages at once, and each projector deletes them from its store asynchronously.
    """
    (result,) = await services.producer.append_events(
        [SessionErased(tenant_id=tenant_id, session_id=session_id, reason=reason)]
    )
    erasure = Erasure(
        tenant_id=tenant_id,
        session_id=session_id,
        partition=result.partition,
        position=Position.parse(result.stream_id),
    )
    texts = (ERASE_DETAIL, ERASE_DONE, ERASE_TIMEOUT)
    return await _erased(request, services, erasure, texts, wait=wait)


@v1.delete(
    f"{SESSION}/messages/{{message_id:{CONVERTOR}}}",
    status_code=202,
    response_model=EraseOut,
    response_model_exclude_none=True,
    summary="Redact a message",
    operation_id="redactMessage",
    responses={
        200: {"model": EraseOut, "description": "With ?wait=true: redacted everywhere."},
        **_errors(401, 422, 503),
        504: {"model": EraseLeftOut, "description": REDACT_TIMEOUT},
    },
)
async def redact(
    request: Request,
    session_id: SessionId,
    message_id: MessageId,
    tenant_id: Tenant,
    services: Services,
    reason: Reason = None,
    wait: Wait = False,
) -> Response:
    """Forget one message of the session and keep the rest; the log keeps only a
    ``message.redacted`` event naming its id.

    Accepted means the redaction is in the log: reads through this API hide the message at
    once, and each projector deletes it from its store asynchronously.
    """
    result = await services.producer.redact(tenant_id, session_id, message_id, reason=reason)
    erasure = Erasure(
        tenant_id=tenant_id,
        session_id=session_id,
        partition=result.partition,
        position=Position.parse(result.stream_id),
        message_id=message_id,
    )
    texts = (REDACT_DETAIL, REDACT_DONE, REDACT_TIMEOUT)
    return await _erased(request, services, erasure, texts, wait=wait)


async def _erased(
    request: Request,
    services: Opened,
    erasure: Erasure,
    texts: tuple[str, str, str],
    *,
    wait: bool,
) -> Response:
    """The answer to an erase or redaction just appended: 202 at once, or with ``wait``
    200 once purged everywhere, 504 naming what is left. ``texts``: the detail when
    accepted, when done, and the error after the time ran out."""
    accepted, finished, timeout = texts
    out = EraseOut(
        session_id=erasure.session_id,
        message_id=erasure.message_id,
        partition=erasure.partition,
        position=str(erasure.position),
        status="accepted",
        detail=accepted,
    )
    if not wait:
        return _json(out.model_dump(exclude_none=True), 202)
    rehydrator = services.rehydrator
    purged, left, log_files = await wait_and_purge(
        rehydrator.redis, [erasure], rehydrator.partitions, timeout_s=_state(request).erase_wait_s
    )
    if left:
        return _json(EraseLeftOut(error=timeout, left=left).model_dump(), 504)
    done = out.model_copy(
        update={
            "status": "done",
            "detail": finished,
            "purged": purged.places,
            "log_files": log_files,
        }
    )
    return _json(done.model_dump(exclude_none=True), 200)


@v1.get(
    "/health",
    summary="Health of the log and the stores",
    operation_id="health",
    responses={503: {"model": HealthOut, "description": "The log cannot be reached."}},
)
async def health(request: Request, response: Response) -> HealthOut:
    """No key needed: whether each service answers, and nothing else."""
    services = await _state(request).health.services()
    status: Literal["ok", "degraded", "down"] = "ok"
    if not all(s.ok for s in services.values()):
        status = "degraded"
    if not (LOG_SERVICE in services and services[LOG_SERVICE].ok):
        status = "down"
        response.status_code = 503
    return HealthOut(status=status, services=dict(services))
