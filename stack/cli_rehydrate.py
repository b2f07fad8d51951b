"""``amem rehydrate``: a session's context as an agent would get it, shown for a person."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rehydrator.context import Context
from rehydrator.rehydrate import SCOPES
from stack.cli_common import JsonFlag, one_line_errors, out, print_json
from stack.rehydration import open_rehydrator
from stack.settings import Settings

STATUS_STYLE = {"ok": "green", "skipped": "dim", "timeout": "yellow", "error": "red"}


@one_line_errors
def rehydrate(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    session: Annotated[str, typer.Option(help="Session id.")],
    query: Annotated[
        str | None, typer.Option(help="What the context is for (default: latest user turn).")
    ] = None,
    budget: Annotated[int, typer.Option(min=1, help="Token budget.")] = 2000,
    scope: Annotated[
        str, typer.Option(help="session, or user: also every session of the same user.")
    ] = "session",
    user: Annotated[
        str | None,
        typer.Option(help="The user of a user scope (default: named by the session's turns)."),
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Rebuild a session's context from every tier, packed to the budget."""
    settings = Settings.from_env()
    if scope not in SCOPES:
        raise typer.BadParameter(f"must be one of {', '.join(SCOPES)}", param_hint="--scope")

    async def run() -> Context:
        async with open_rehydrator(settings) as rehydrator:
            return await rehydrator.rehydrate(
                tenant, session, query, budget, scope=scope, user_id=user
            )

    try:
        context = asyncio.run(run())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if json:
        print_json(context.as_json())
    else:
        show(context)


def _found_by(scores: dict[str, float]) -> str:
    return " ".join(f"{tier} {score:.2f}" for tier, score in scores.items())


def show(context: Context) -> None:
    """The context, its provenance and its timings, readable in a terminal."""
    scope = f" + user {context.user_id}" if context.scope == "user" else ""
    title = (
        f"[bold]{context.tenant_id} / {context.session_id}{scope}[/]  "
        f"{context.tokens}/{context.budget_tokens} tokens, {len(context.items)} messages, "
        f"{context.elapsed_ms:.1f} ms"
    )
    query = Text(context.query or "(none)")
    query.stylize("italic")
    lines = Text.assemble(
        ("query ", "bold"), query, f"  ({context.query_source})", "\n", context.header or ""
    )
    out.print(Panel(lines, title=title, title_align="left"))

    items = Table(show_lines=False, expand=True)
    if context.scope == "user":
        items.add_column("session", style="blue", no_wrap=True)
    items.add_column("id", style="cyan", no_wrap=True)
    items.add_column("message", ratio=1)
    items.add_column("tokens", justify="right")
    items.add_column("found by (score)", style="magenta")
    for item in context.items:
        where = [item.message.session_id] if context.scope == "user" else []
        items.add_row(
            *where, item.message.id, item.text, str(item.tokens), _found_by(dict(item.found_by))
        )
    out.print(items)

    tiers = Table(title="tiers", title_justify="left")
    for column in ("tier", "store", "status", "ms", "candidates", "detail"):
        tiers.add_column(column, justify="right" if column in ("ms", "candidates") else "left")
    for t in context.tiers:
        style = STATUS_STYLE[t.status]
        tiers.add_row(
            t.tier,
            t.store or "",
            f"[{style}]{t.status}[/]",
            f"{t.ms:.1f}",
            str(t.candidates or ""),
            t.detail or "",
        )
    out.print(tiers)
    marks = ", ".join(f"{p} {w or '-'}" for p, w in context.watermarks.items())
    tail = f"; {context.from_log_tail} from the log tail" if context.from_log_tail else ""
    degraded = f"; degraded: {', '.join(context.degraded)}" if context.degraded else ""
    out.print(f"[dim]watermarks: {marks}{tail}{degraded}[/]")
