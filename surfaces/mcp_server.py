"""``amem mcp``: the memory as five MCP tools, over stdio or streamable HTTP (``docs/mcp.md``).

The tools mirror the HTTP API (:mod:`rehydrator.http_routes`): the same message model, ids
and limits. The tenant is never a tool argument: the caller of :func:`build_server` decides
it, from ``--tenant`` over stdio, from the request's API key over HTTP.

Needs the ``mcp`` extra (``pip install 'atomic-memory[mcp]'``); the core never imports this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

import pydantic
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, InputRequiredResult, ToolAnnotations
from pydantic import Field
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from projectors.store import SessionSummary
from rehydrator.context import Context as Rehydrated
from rehydrator.context import stored_json
from rehydrator.http_keys import ApiKeys
from rehydrator.http_models import ID_REGEX, ID_RULE, MAX_HISTORY, MAX_MESSAGES, MessageIn
from rehydrator.rehydrate import MAX_BUDGET, ScopeName
from schemas.errors import AmemError
from schemas.limits import DEFAULT_LIMITS
from schemas.validation import validate_content
from surfaces.memory import Memory

SERVER_NAME = "atomic-memory"
INSTRUCTIONS = (
    "Durable memory of conversations. Call `remember` with each turn worth keeping, `recall`"
    " at the start of a task (or when context was lost) to get the relevant earlier turns,"
    " `read_session` for a session's latest messages as they were written, `list_sessions` to"
    " find a session, and `forget` when asked to erase a session or one message."
)
MAX_SESSIONS = 1000
"""Sessions per ``list_sessions`` call."""

MemoryContext = Context[Memory, Any]
TenantOf = Callable[[MemoryContext], str]
"""The tenant of a tool call, from what the transport knows of its caller."""


def _id(description: str) -> Any:
    return Field(
        min_length=1,
        max_length=DEFAULT_LIMITS.max_id_chars,
        pattern=ID_REGEX,
        description=description,
    )


SessionId = Annotated[str, _id(f"The conversation's id: {ID_RULE}. A new id starts a new session.")]
MessageId = Annotated[
    str, _id(f"A message's id, as remember or read_session returned it: {ID_RULE}.")
]
UserId = Annotated[
    str | None,
    _id("Whose sessions a user scope reaches. Default: the user the session's latest turns name."),
]
Messages = Annotated[
    list[MessageIn],
    Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description=f"1-{MAX_MESSAGES} messages, in order; appended all or nothing.",
    ),
]
Query = Annotated[
    str | None,
    Field(
        max_length=DEFAULT_LIMITS.max_content_bytes,
        description="What the context is for, in words. Default: the session's latest user turn.",
    ),
]
Budget = Annotated[
    int,
    Field(ge=1, le=MAX_BUDGET, description="Tokens the packed context may use at most."),
]
RecallScope = Annotated[
    ScopeName,
    Field(
        description="session: this session's turns; user: also every session of the same user,"
        " in one budget."
    ),
]
Limit = Annotated[int, Field(ge=1, le=MAX_HISTORY, description="The last this many messages.")]
SessionLimit = Annotated[
    int, Field(ge=1, le=MAX_SESSIONS, description="At most this many sessions.")
]
Reason = Annotated[
    str | None, Field(max_length=1024, description="Why; kept in the log with the erase.")
]
Wait = Annotated[
    bool,
    Field(
        description="Return only once every store deleted it and the log server was purged"
        " (at most AMEM_ERASE_WAIT_S, 30 s by default); the answer names what is left."
    ),
]


class MemoryServer(MCPServer[Memory]):
    """An MCP server whose tool errors are one line naming the tool and the reason.

    The SDK reports bad arguments with pydantic's multi-line text and hides what a tool
    raised; a model needs one line it can act on, and our errors are written to be that.
    """

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: MemoryContext | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            reason = _reason(exc.__cause__)
            if reason is None:
                raise
            raise ToolError(f"{name}: {reason}") from exc.__cause__


def _reason(cause: BaseException | None) -> str | None:
    """One line for an error the caller can fix; None for anything else (a crash)."""
    if isinstance(cause, pydantic.ValidationError):
        return "; ".join(_validation_line(e) for e in cause.errors(include_url=False))
    if isinstance(cause, AmemError | ValueError):
        return " ".join(str(cause).split())
    return None


def _validation_line(error: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"])
    message = " ".join(str(error["msg"]).split())
    if error["type"] == "string_pattern_mismatch":  # every pattern here is the id rule
        message = f"must be {ID_RULE}"
    return f"{where}: {message}" if where else message


def build_server(
    open_memory: Callable[[], AbstractAsyncContextManager[Memory]], tenant_of: TenantOf
) -> MemoryServer:
    """The five tools over the memory ``open_memory`` opens for the server's lifetime,
    each call's tenant given by ``tenant_of``."""
    server = MemoryServer(
        SERVER_NAME, instructions=INSTRUCTIONS, lifespan=lambda _server: open_memory()
    )

    def opened(ctx: MemoryContext) -> tuple[Memory, str]:
        return ctx.request_context.lifespan_context, tenant_of(ctx)

    @server.tool(annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=True))
    async def remember(
        session_id: SessionId, messages: Messages, ctx: MemoryContext
    ) -> dict[str, Any]:
        """Store messages of a conversation in durable memory, in order.

        Give each message a role (user, assistant, system or tool) and its content. An id is
        an idempotency key: sending the same id again stores nothing twice. user_id names
        the person the memory is about, so that recall with scope "user" finds it from any
        session. Stored means readable at once by read_session and recall. Returns per
        message its id, where it is in the log, and whether it was a duplicate.
        """
        memory, tenant = opened(ctx)
        batch = [m.message(tenant, session_id) for m in messages]
        results = await memory.remember(batch)
        return {
            "messages": [
                {
                    "id": m.id,
                    "partition": r.partition,
                    "position": r.stream_id,
                    "duplicate": r.duplicate,
                }
                for m, r in zip(batch, results, strict=True)
            ]
        }

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def recall(
        session_id: SessionId,
        ctx: MemoryContext,
        query: Query = None,
        budget_tokens: Budget = 2000,
        scope: RecallScope = "session",
        user_id: UserId = None,
    ) -> dict[str, Any]:
        """Recall what is relevant from memory to continue a conversation.

        Returns `text` (the context to read: a header line and one "speaker: text" line per
        remembered turn, oldest first, within budget_tokens) and `items`, the same turns
        with their ids and provenance: `found_by` names which searches found each turn and
        their scores. With scope "user", turns of the user's other sessions are included.
        `degraded` lists searches that did not answer in time. A session never written to
        gives an empty context.
        """
        memory, tenant = opened(ctx)
        if query is not None:
            validate_content(query, field="query")  # NUL, bytes: as a message's content
        context = await memory.recall(
            tenant,
            session_id,
            query=query,
            budget_tokens=budget_tokens,
            scope=scope,
            user_id=user_id,
        )
        return _recalled(context)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def read_session(
        session_id: SessionId, ctx: MemoryContext, limit: Limit = 100
    ) -> dict[str, Any]:
        """Read a session's latest messages exactly as they were stored, oldest first.

        Includes messages stored a moment ago; erased and redacted ones are gone. An unknown
        session has no messages.
        """
        memory, tenant = opened(ctx)
        found = await memory.read(tenant, session_id, limit=limit)
        return {"session_id": session_id, "messages": [stored_json(s) for s in found]}

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def list_sessions(ctx: MemoryContext, limit: SessionLimit = 100) -> dict[str, Any]:
        """List the sessions in memory, the most recently active first, with how many
        messages each has, who took part, and when it started and last changed."""
        memory, tenant = opened(ctx)
        found = await memory.sessions(tenant, limit=limit)
        return {"sessions": [_summary(s) for s in found]}

    @server.tool(annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=True))
    async def forget(
        session_id: SessionId,
        ctx: MemoryContext,
        message_id: MessageId | None = None,
        reason: Reason = None,
        wait: Wait = False,
    ) -> dict[str, Any]:
        """Erase a whole session from memory, or with message_id only that one message.

        Irreversible. Reads stop returning what was erased at once; the stores delete it
        shortly after (with wait, before this returns). Later messages to the session are
        remembered afresh.
        """
        memory, tenant = opened(ctx)
        report = await memory.forget(
            tenant,
            session_id,
            message_id=message_id,
            reason=reason,
            wait_s=memory.settings.erase_wait_s if wait else None,
        )
        return report.as_json()

    return server


def _recalled(context: Rehydrated) -> dict[str, Any]:
    # The model needs the text and where each turn came from; the tier timings and
    # watermarks of the HTTP API's answer are operators' detail.
    full = context.as_json()
    kept = (
        "session_id",
        "scope",
        "user_id",
        "query",
        "query_source",
        "budget_tokens",
        "tokens",
        "text",
        "items",
        "degraded",
        "from_log_tail",
    )
    return {key: full[key] for key in kept}


def _summary(s: SessionSummary) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "message_count": s.message_count,
        "participants": sorted(s.participants),
        "first_at": s.first_at.isoformat(),
        "last_at": s.last_at.isoformat(),
    }


def fixed_tenant(tenant_id: str) -> TenantOf:
    """Every call is ``tenant_id``'s (stdio: one local client, started by its user)."""
    return lambda _ctx: tenant_id


def api_key(headers: Mapping[str, str]) -> str | None:
    """The key a request presents, as the HTTP API reads it: ``Authorization: Bearer`` or
    ``X-API-Key``; ValueError when both are sent and differ."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    bearer = credentials.strip() if scheme.lower() == "bearer" else ""
    header = headers.get("x-api-key", "")
    if bearer and header and bearer != header:
        raise ValueError("Authorization and X-API-Key name different keys")
    return bearer or header or None


def key_tenant(keys: ApiKeys) -> TenantOf:
    """Each call is the tenant of the API key of the HTTP request that carried it."""

    def tenant(ctx: MemoryContext) -> str:
        found = keys.tenant_for(api_key(ctx.headers or {}))
        if found is None:  # the gate refused such requests already: never guess a tenant
            raise ToolError("no valid API key")
        return found

    return tenant


class KeyGate:
    """ASGI middleware: 401 for an HTTP request without a known API key (local mode lets
    every request through), before it reaches the MCP transport."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self._app = app
        self._keys = keys
        self._log = logging.getLogger(f"{__name__}.{type(self).__name__}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self._refusal(scope)
            if problem is not None:
                self._log.info("refused %s %s: %s", scope["method"], scope["path"], problem)
                response = JSONResponse(
                    {"error": f"{problem}: send Authorization: Bearer <key> or X-API-Key: <key>"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self._app(scope, receive, send)

    def _refusal(self, scope: Scope) -> str | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            key = api_key(headers)
        except ValueError as exc:
            return str(exc)
        if self._keys.tenant_for(key) is not None:
            return None
        return "unknown API key" if key else "no API key"


def http_app(server: MemoryServer, keys: ApiKeys, host: str) -> ASGIApp:
    """The streamable HTTP app (at ``/mcp``) behind the API key gate."""
    return KeyGate(server.streamable_http_app(host=host), keys)
