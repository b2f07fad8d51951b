"""``amem log …``: the log's retention, on demand."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from logserver import connect
from projectors.retention import PartitionTrim, trim
from schemas.errors import ConfigurationError
from stack.cli_common import JsonFlag, one_line_errors, out, print_json
from stack.settings import Settings

log_app = typer.Typer(no_args_is_help=True, help="The log's hot window and its archive.")


@log_app.command("trim")
@one_line_errors
def trim_now(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would go; delete nothing.")
    ] = False,
    json: JsonFlag = False,
) -> None:
    """Trim every partition's streams below the archive, every group and the hot window.

    Workers do this every AMEM_LOG_TRIM_INTERVAL_S; the window is AMEM_LOG_RETAIN.
    """
    settings = Settings.from_env()
    window = settings.runtime.retain
    if window is None:
        raise ConfigurationError("AMEM_LOG_RETAIN is off: nothing is ever trimmed")

    async def run() -> list[PartitionTrim]:
        redis = connect(settings.require_redis())
        try:
            return await trim(redis, settings.runtime.partitions, window, dry_run=dry_run)
        finally:
            await redis.aclose()

    done = asyncio.run(run())
    rows = [s for p in done for s in ((p.partition, p.log), (p.partition, p.enriched))]
    if json:
        print_json(
            {
                "dry_run": dry_run,
                "window": str(window),
                "trimmed": sum(s.trimmed for _, s in rows),
                "streams": [
                    {
                        "partition": n,
                        "stream": s.stream,
                        "trimmed": s.trimmed,
                        "bound": s.bound,
                        "held_by": s.held_by,
                        "hot": s.hot,
                    }
                    for n, s in rows
                ],
            }
        )
        return
    verb = "would trim" if dry_run else "trimmed"
    table = Table("stream", verb, "below", "held by", "left", title=f"window {window}")
    for _, s in rows:
        table.add_row(s.stream, str(s.trimmed), s.bound or "", s.held_by, str(s.hot))
    out.print(table)
    out.print(f"{verb} {sum(s.trimmed for _, s in rows)} entries")
