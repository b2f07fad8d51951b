"""``amem serve``: the HTTP API (``docs/http-api.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stack.cli_common import err, one_line_errors, out
from stack.serve import serve as run_server
from stack.serve import write_openapi
from stack.settings import Settings


@one_line_errors
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default: AMEM_HTTP_HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port (default: AMEM_HTTP_PORT, 8080)."),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(min=1, help="Server processes on the one port (about one core each)."),
    ] = 1,
    openapi: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Write the OpenAPI schema to this file and exit."),
    ] = None,
) -> None:
    """Serve the HTTP API until SIGINT/SIGTERM.

    Tenants come from API keys: AMEM_API_KEYS=key=tenant,...
    Without keys: local mode (tenant "default", no key), on a loopback address only.
    """
    if openapi is not None:
        write_openapi(openapi)
        out.print(f"wrote {openapi}")
        return
    settings = Settings.from_env()
    run_server(
        settings,
        host or settings.http_host,
        port or settings.http_port,
        announce=lambda line: err.print(line, style="bold", highlight=False, soft_wrap=True),
        workers=workers,
    )
