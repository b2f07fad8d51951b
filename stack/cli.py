"""``amem``: the operator's and the agent builder's command line."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from producer import Producer
from producer.importer import import_records, read_history
from producer.settings import parse_durability
from schemas.errors import ConfigurationError, ValidationError
from schemas.events import Message
from schemas.validation import validate_message
from stack import health, worker_pool
from stack.cli_common import JsonFlag, err, one_line_errors, out, print_json
from stack.cli_erase import erase
from stack.cli_log import log_app
from stack.cli_mcp import mcp
from stack.cli_project import dlq_app, project_app, verify
from stack.cli_rehydrate import rehydrate
from stack.cli_serve import serve
from stack.embedded import control
from stack.projections import NOT_REBUILT, select
from stack.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(project_app, name="project")
app.add_typer(dlq_app, name="dlq")
app.add_typer(log_app, name="log")
app.command()(verify)
app.command()(erase)
app.command()(rehydrate)
app.command()(serve)
app.command()(mcp)


@app.command()
@one_line_errors
def up(
    cluster: Annotated[
        int,
        typer.Option(
            min=0,
            help="Run the log server as a Redis Cluster of this many masters (fixed once"
            " created; later `amem up` restarts it as it is).",
        ),
    ] = 0,
    replicas: Annotated[
        int, typer.Option(min=0, help="Replicas per master of the cluster (with --cluster).")
    ] = 0,
    json: JsonFlag = False,
) -> None:
    """Start the embedded services under AMEM_HOME (harmless when they already run)."""
    if replicas and not cluster:
        raise ConfigurationError("--replicas needs --cluster")
    settings = Settings.from_env()
    state = control.up(settings, cluster=cluster, replicas=replicas)
    urls = {f"{name}_url": rec.url for name, rec in state.services.items()}
    if json:
        print_json({"home": str(settings.home), **urls})
        return
    table = Table("service", "url", "pid", title=f"embedded stack in {settings.home}")
    for name, rec in state.services.items():
        table.add_row(name, rec.url, str(rec.pid))
    out.print(table)
    out.print(f"Other amem commands find these through AMEM_HOME={settings.home}.")


@app.command()
@one_line_errors
def down(json: JsonFlag = False) -> None:
    """Stop the embedded services (also after the process that started them was killed)."""
    stopped = control.down(Settings.from_env())
    if json:
        print_json({"stopped": stopped})
    else:
        out.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command()
@one_line_errors
def status(json: JsonFlag = False) -> None:
    """Health of each service and the log's partitions; exits 1 when a service is down."""
    settings = Settings.from_env()
    checks = asyncio.run(health.check_all(settings))
    log = projectors = None
    if settings.redis_url is not None and next(c.ok for c in checks if c.name == "redis"):
        log = asyncio.run(health.log_status(settings, settings.redis_url))
        projectors = asyncio.run(
            health.projector_status(
                settings.redis_url, select(settings), settings.runtime.partitions
            )
        )
    if json:
        _status_json(settings, checks, log, projectors)
    else:
        table = Table("service", "ok", "detail", "ms", "url")
        for c in checks:
            ok = "[green]up[/]" if c.ok else "[red]down[/]"
            table.add_row(c.name, ok, c.detail, str(c.latency_ms or ""), c.url or "")
        out.print(table)
        if log is not None:
            if len(log.nodes) > 1:
                out.print(_nodes_table(log))
            out.print(_log_table(log))
        if projectors is not None:
            _print_projectors(projectors, worker_pool.running(settings))
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


def _nodes_table(log: health.LogStatus) -> Table:
    """The cluster's nodes: role, slots, reachable."""
    table = Table("node", "role", "slots", "up", title="log server: Redis Cluster")
    for node in log.nodes:
        role = node.role if node.master is None else f"replica of {node.master}"
        table.add_row(node.address, role, node.slots, "[green]up[/]" if node.up else "[red]down[/]")
    return table


def _log_table(log: health.LogStatus) -> Table:
    """Per partition what the hot window holds and how far the archive reaches."""
    memory = log.state.memory_bytes / 2**20
    table = Table(
        "partition",
        "log entries",
        "oldest log id",
        "enriched entries",
        "oldest enriched id",
        "archived up to",
        title=f"log: {log.partitions or 'no'} partitions, log server memory {memory:.1f} MiB",
    )
    for p in log.state.partitions:
        table.add_row(
            str(p.partition),
            str(p.log.hot),
            p.log.oldest or "",
            str(p.enriched.hot),
            p.enriched.oldest or "",
            "" if p.archived is None else str(p.archived),
        )
    table.add_row("total", str(sum(p.log.hot for p in log.state.partitions)))
    return table


def _status_json(
    settings: Settings,
    checks: list[health.Health],
    log: health.LogStatus | None,
    projectors: health.ProjectorStatus | None,
) -> None:
    print_json(
        {
            "home": str(settings.home),
            "services": [c.as_json() for c in checks],
            "log": None
            if log is None
            else {
                "partitions": log.partitions,
                "memory_bytes": log.state.memory_bytes,
                "nodes": [asdict(node) for node in log.nodes],
                "entries": [p.log.hot for p in log.state.partitions],
                "total": sum(p.log.hot for p in log.state.partitions),
                "streams": [
                    {
                        "partition": p.partition,
                        "log_entries": p.log.hot,
                        "log_oldest": p.log.oldest,
                        "enriched_entries": p.enriched.hot,
                        "enriched_oldest": p.enriched.oldest,
                        "archived": None if p.archived is None else str(p.archived),
                    }
                    for p in log.state.partitions
                ],
            },
            "projectors": None
            if projectors is None
            else {
                "workers": worker_pool.running(settings),
                "embedded": projectors.embedded,
                "dead_letters": projectors.dead_letters,
                "generations": {
                    name: {
                        "live": projectors.generations.live_of(name),
                        "building": projectors.generations.building.get(name),
                        "dropping": retired.generation
                        if (retired := projectors.generations.retired.get(name))
                        else None,
                    }
                    for name in dict.fromkeys(g.projector for g in projectors.groups)
                    if name not in NOT_REBUILT
                },
                "groups": [
                    {
                        "projector": g.projector,
                        "partition": g.partition,
                        "stream": g.stream,
                        "lag": g.lag,
                        "pending": g.pending,
                        "last_delivered": g.last_delivered,
                    }
                    for g in projectors.groups
                ],
            },
        }
    )


def _print_projectors(status: health.ProjectorStatus, workers: list[int]) -> None:
    running = (
        f"{len(workers)} worker{'s' * (len(workers) != 1)} running"
        if workers
        else "no worker running"
    )
    title = f"projectors: {running}, {status.embedded} messages embedded"
    table = Table(
        "projector",
        "generation",
        "partition",
        "lag",
        "pending",
        "last delivered",
        "dlq",
        title=title,
    )
    shown: set[str] = set()
    for g in status.groups:
        # Partitions whose stream never had an entry say nothing; --json lists them all.
        if not (g.lag or g.pending) and g.last_delivered in (None, "0-0"):
            continue
        first = g.projector not in shown
        shown.add(g.projector)
        table.add_row(
            g.projector if first else "",
            status.generation(g.projector) if first and g.projector not in NOT_REBUILT else "",
            str(g.partition),
            "?" if g.lag is None else str(g.lag),
            str(g.pending),
            g.last_delivered or "-",
            str(status.dead_letters.get(g.projector, 0)) if first else "",
        )
    out.print(table)


def _read_text(text: str) -> str:
    if text != "-":
        return text
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError("content", f"is not valid UTF-8 ({exc.reason})") from None


@app.command()
@one_line_errors
def append(
    text: Annotated[str, typer.Argument(help="The message content; - reads standard input.")],
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    session: Annotated[str, typer.Option(help="Session id.")],
    role: Annotated[str, typer.Option(help="system, user, assistant or tool.")],
    id: Annotated[str | None, typer.Option(help="Message id (idempotency key).")] = None,
    parent: Annotated[str | None, typer.Option(help="Id of the message this replies to.")] = None,
    name: Annotated[str | None, typer.Option(help="Tool or speaker name.")] = None,
    agent: Annotated[str | None, typer.Option(help="Agent id.")] = None,
    user: Annotated[
        str | None, typer.Option(help="User id: whose memory this is (rehydrate --scope user).")
    ] = None,
    durability: Annotated[
        str | None, typer.Option(help="memory or fsync (default: AMEM_DURABILITY).")
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Append one message to the log; prints its stream id."""
    settings = Settings.from_env()
    fields: dict[str, Any] = {
        "parent_id": parent,
        "name": name,
        "agent_id": agent,
        "user_id": user,
    }
    if id is not None:
        fields["id"] = id
    message = Message(
        tenant_id=tenant, session_id=session, role=role, content=_read_text(text), **fields
    )
    validate_message(message, settings.producer.limits)
    mode = None if durability is None else parse_durability(durability, "--durability")

    async def run() -> Any:
        async with Producer.from_url(settings.require_redis(), settings.producer) as producer:
            return await producer.append(message, durability=mode)

    result = asyncio.run(run())
    if json:
        print_json(
            {
                "id": message.id,
                "stream_id": result.stream_id,
                "partition": result.partition,
                "duplicate": result.duplicate,
            }
        )
    else:
        out.print(result.stream_id + (" (duplicate)" if result.duplicate else ""))


@app.command("import")
@one_line_errors
def import_(
    path: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="JSON, JSONL or LoCoMo.")
    ],
    tenant: Annotated[str, typer.Option(help="Tenant the history belongs to.")] = "default",
    json: JsonFlag = False,
) -> None:
    """Import an existing history; importing the same file again appends nothing."""
    settings = Settings.from_env()
    records = read_history(path, tenant, settings.producer.limits)

    async def run() -> Any:
        async with Producer.from_url(settings.require_redis(), settings.producer) as producer:
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=json,
            ) as progress:
                task = progress.add_task(f"importing {path.name}", total=len(records))
                return await import_records(
                    producer, records, progress=lambda n: progress.advance(task, n)
                )

    report = asyncio.run(run())
    if json:
        print_json(report.as_json())
        return
    for rejected in report.rejected:
        err.print(f"rejected {rejected.source}: {rejected.reason}", highlight=False)
    out.print(
        f"appended {report.appended}, duplicates {report.duplicates}, "
        f"rejected {len(report.rejected)} ({report.sessions} sessions)"
    )


if __name__ == "__main__":
    app()
