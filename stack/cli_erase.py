"""``amem erase``: forget a session, one message of it, or every session of a tenant,
everywhere."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from schemas.errors import ConfigurationError
from stack.cli_common import JsonFlag, err, one_line_errors, out, print_json
from stack.erasing import EraseReport, erase_sessions, redact_message, tenant_sessions
from stack.settings import Settings


@one_line_errors
def erase(
    tenant: Annotated[str, typer.Option(help="The tenant whose data goes.")],
    session: Annotated[str | None, typer.Option(help="Erase this session.")] = None,
    message: Annotated[
        str | None,
        typer.Option(help="Redact only this message of --session; the rest of it stays."),
    ] = None,
    all_sessions: Annotated[
        bool, typer.Option("--all", help="Erase every session of the tenant (offboarding).")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="Why; kept with the erase.")] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Return once every projector applied the erase and the log server is purged.",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits (exit 1 after).")] = 120,
    json: JsonFlag = False,
) -> None:
    """Erase from every projection, the archive and the log server (see docs/erase.md);
    with --message, only that message of the session (a redaction).

    Without --wait it returns once the erase is in the log: reads hide the session at once
    and every store deletes it asynchronously.
    """
    if (session is None) == (not all_sessions):
        raise ConfigurationError("give exactly one of --session S or --all")
    if message is not None and session is None:
        raise ConfigurationError("--message M needs --session S: message ids are per session")
    settings = Settings.from_env()
    wait_s = timeout if wait else None

    async def run() -> EraseReport:
        if session is not None and message is not None:
            return await redact_message(
                settings, tenant, session, message, reason=reason, wait_s=wait_s
            )
        sessions = [session] if session is not None else await tenant_sessions(settings, tenant)
        return await erase_sessions(settings, tenant, sessions, reason=reason, wait_s=wait_s)

    report = asyncio.run(run())
    if json:
        print_json(report.as_json())
    else:
        if message is not None:
            out.print(f"message {message} of {tenant}/{session} redacted in the log")
        else:
            out.print(f"{len(report.erased)} session(s) of {tenant} erased in the log")
        if report.waited:
            for place, count in report.purged.places.items():
                out.print(f"  purged from {place}: {count}")
            out.print(f"  log server files: {report.log_files}")
            for name, waiting in report.left.items():
                err.print(f"[red]{name} still waits for:[/] {', '.join(waiting)}")
    if report.waited and not report.done:
        raise typer.Exit(1)
