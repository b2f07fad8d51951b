"""``amem mcp``: the memory as an MCP server, over stdio or streamable HTTP (``docs/mcp.md``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from enum import StrEnum
from typing import Annotated

import anyio
import typer
import uvicorn

from rehydrator.http_keys import LOCAL_TENANT, ApiKeys
from schemas.errors import ConfigurationError
from schemas.validation import validate_id
from stack.cli_common import err, one_line_errors
from stack.serve import describe_mode
from stack.settings import Settings

MISSING_EXTRA = "amem mcp needs the mcp extra: pip install 'atomic-memory[mcp]'"
DEFAULT_PORT = 8090
"""Beside ``amem serve``'s 8080, so both can run on one machine."""


class Transport(StrEnum):
    """How MCP clients reach the server."""

    stdio = "stdio"
    http = "http"


@one_line_errors
def mcp(
    transport: Annotated[
        Transport,
        typer.Option(help="stdio: one client that starts this process; http: streamable HTTP."),
    ] = Transport.stdio,
    tenant: Annotated[
        str | None,
        typer.Option(help=f"Tenant of every call over stdio (default: {LOCAL_TENANT})."),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(help="http: address to bind (default: AMEM_HTTP_HOST, 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int, typer.Option(min=1, max=65535, help=f"http: port (default: {DEFAULT_PORT}).")
    ] = DEFAULT_PORT,
) -> None:
    """Serve the memory to MCP clients (Claude Desktop, IDEs, agent frameworks).

    Tools: remember, recall, read_session, list_sessions, forget.
    Over stdio the tenant is --tenant; over http it is the API key's (AMEM_API_KEYS, as
    amem serve; without keys: local mode, tenant "default", loopback only).
    """
    settings = Settings.from_env()
    logging.basicConfig(  # stderr: over stdio, stdout carries the protocol and nothing else
        level=os.environ.get("AMEM_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    if transport is Transport.stdio:
        if host is not None:
            raise ConfigurationError("--host is for --transport http")
        _stdio(settings, validate_id("--tenant", tenant or LOCAL_TENANT))
        return
    if tenant is not None:
        raise ConfigurationError(
            "--tenant is for --transport stdio: over http the tenant is the API key's"
        )
    _http(settings, host or settings.http_host, port)


@contextmanager
def _extra_needed() -> Iterator[None]:
    # The core install has no `mcp` package: every other command works without it.
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in ("mcp", "mcp_types"):
            raise
        raise ConfigurationError(MISSING_EXTRA) from None


def _announce(line: str) -> None:
    err.print(line, style="bold", highlight=False, soft_wrap=True)


def _stdio(settings: Settings, tenant: str) -> None:
    with _extra_needed():
        from surfaces.mcp_server import build_server, fixed_tenant
    from surfaces.memory import Memory

    async def serve() -> None:
        # Opened before the transport: a stack that cannot be reached is then our one-line
        # error, not a traceback out of the SDK's task groups.
        async with Memory.open(settings) as memory:
            server = build_server(lambda: nullcontext(memory), fixed_tenant(tenant))
            await server.run_stdio_async()

    _announce(f"MCP over stdio: every call is tenant {tenant!r} (memory in {settings.home})")
    anyio.run(serve)


def _http(settings: Settings, host: str, port: int) -> None:
    with _extra_needed():
        from surfaces.mcp_server import build_server, http_app, key_tenant
    from surfaces.memory import Memory

    keys = ApiKeys.for_bind(settings.api_keys, host)
    settings.require_redis()  # before uvicorn, whose failed startup is a traceback
    server = build_server(lambda: Memory.open(settings), key_tenant(keys))
    _announce(f"MCP over streamable HTTP at /mcp, {describe_mode(keys, host, port)}")
    # As `amem serve`: nothing decides on client addresses, so no proxy headers.
    uvicorn.run(
        http_app(server, keys, host), host=host, port=port, proxy_headers=False, server_header=False
    )
