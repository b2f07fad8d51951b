"""``amem project …``, ``amem verify`` and ``amem dlq …``: running and checking projectors."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import redis.asyncio as aioredis
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from logserver import connect
from projectors.deadletter import list_dead_letters, retry_dead_letters
from projectors.enrichment.models import MODELS, check_model
from projectors.lag import WORKER_GONE_S, GroupState, group_states, has_running_worker
from schemas.errors import ConfigurationError
from stack import rebuilding, worker_pool
from stack.cli_common import JsonFlag, err, one_line_errors, out, print_json
from stack.projections import (
    NOT_REBUILT,
    PROJECTORS,
    VECTOR_STORES,
    reads_enriched,
    rebuilt_in_place,
    select,
)
from stack.settings import Settings
from stack.verifying import erased_residue, verify_now

project_app = typer.Typer(no_args_is_help=True, help="Run, watch and rebuild projector workers.")
dlq_app = typer.Typer(no_args_is_help=True, help="Inspect and retry dead-lettered entries.")

ProjectorOpt = Annotated[
    list[str] | None,
    typer.Option("--projector", "-p", help=f"Repeatable; default: all of {', '.join(PROJECTORS)}."),
]
WorkersOpt = Annotated[int, typer.Option("--workers", "-w", min=1, help="Worker processes.")]


@project_app.command("run")
@one_line_errors
def run(projector: ProjectorOpt = None, workers: WorkersOpt = 1) -> None:
    """Run workers in the foreground until SIGINT/SIGTERM (each finishes its batch in hand)."""
    raise typer.Exit(worker_pool.run(Settings.from_env(), projector, workers))


@project_app.command("start")
@one_line_errors
def start(projector: ProjectorOpt = None, workers: WorkersOpt = 1, json: JsonFlag = False) -> None:
    """Start workers in the background (harmless when they already run)."""
    settings = Settings.from_env()
    pids = worker_pool.start(settings, projector, workers)
    if json:
        print_json({"pids": pids})
    else:
        out.print(f"workers running: {', '.join(map(str, pids))} (logs in {settings.home}/logs)")


@project_app.command("stop")
@one_line_errors
def stop(json: JsonFlag = False) -> None:
    """Stop background workers: SIGTERM, then SIGKILL after the graceful timeout."""
    pids = worker_pool.stop(Settings.from_env())
    if json:
        print_json({"stopped": pids})
    else:
        out.print(f"stopped: {', '.join(map(str, pids)) or 'no worker was running'}")


async def _states(settings: Settings, names: list[str]) -> list[GroupState]:
    redis = connect(settings.require_redis())
    try:
        return await group_states(redis, names, settings.runtime.partitions, reads_enriched)
    finally:
        await redis.aclose()


def _remaining(states: list[GroupState], name: str) -> int:
    return sum((s.lag or 0) + s.pending for s in states if s.projector == name)


async def _unconsumed(settings: Settings, names: list[str]) -> list[str]:
    """Of ``names``, those no worker has read for :data:`WORKER_GONE_S`."""
    redis = connect(settings.require_redis())
    partitions = settings.runtime.partitions
    try:
        return [
            name
            for name in names
            if not await has_running_worker(redis, name, partitions, enriched=reads_enriched(name))
        ]
    finally:
        await redis.aclose()


@project_app.command("wait")
@one_line_errors
def wait(
    projector: ProjectorOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds before giving up (exit 1).")] = 600,
    json: JsonFlag = False,
) -> None:
    """Wait until the projectors have applied the whole log, with a progress bar each."""
    settings = Settings.from_env()
    names = list(select(settings, projector))
    deadline = time.monotonic() + timeout
    idle_check = time.monotonic() + WORKER_GONE_S
    states = asyncio.run(_states(settings, names))
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=json,
    ) as progress:
        totals = {n: max(_remaining(states, n), 1) for n in names}
        tasks = {n: progress.add_task(n, total=totals[n]) for n in names}
        while True:
            for n in names:
                left = _remaining(states, n)
                if left > totals[n]:  # more traffic arrived: grow the bar
                    totals[n] = left
                    progress.update(tasks[n], total=left)
                progress.update(tasks[n], completed=totals[n] - left)
            if all(_remaining(states, n) == 0 for n in names):
                break
            if time.monotonic() > deadline:
                behind = {n: _remaining(states, n) for n in names if _remaining(states, n)}
                raise ConfigurationError(f"projectors still behind after {timeout:.0f} s: {behind}")
            if time.monotonic() > idle_check:
                behind_names = [n for n in names if _remaining(states, n)]
                if stalled := asyncio.run(_unconsumed(settings, behind_names)):
                    raise ConfigurationError(
                        f"no worker runs {', '.join(stalled)} (none has read for"
                        f" {WORKER_GONE_S:.0f} s): start them with `amem project start`"
                    )
                idle_check = time.monotonic() + WORKER_GONE_S
            time.sleep(0.25)
            states = asyncio.run(_states(settings, names))
    if json:
        print_json({"caught_up": names})


@project_app.command("rebuild")
@one_line_errors
def rebuild(
    name: Annotated[str, typer.Argument(help="The projection to rebuild from the log.")],
    wait: Annotated[
        bool,
        typer.Option("--wait/--no-wait", help="Follow the rebuild until the old one is dropped."),
    ] = True,
    timeout: Annotated[
        float,
        typer.Option(min=0, help="Exit 1 if not done after this many seconds (0: no limit)."),
    ] = 0,
    model: Annotated[
        str | None,
        typer.Option(
            help=f"Keep the new generation in this embedding model ({', '.join(MODELS)}); "
            "vector projections only. Default: the live generation's."
        ),
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Build a new generation of one projection beside the live one, then switch to it.

    The workers running the projection replay the streams and the archive into the new
    generation while the live one keeps serving reads and taking every batch; once it has
    caught up it is switched live at once and the old one dropped. Vector stores replay
    the stored vectors: nothing is embedded again. Neo4j is rebuilt in place.
    """
    settings = Settings.from_env()
    if name in NOT_REBUILT:
        raise ConfigurationError(
            f"the {name} is not rebuilt: it holds the stored vectors and events others replay"
        )
    select(settings, [name])
    if model is not None:
        check_model(model)
        if name not in VECTOR_STORES or rebuilt_in_place(settings, name):
            raise ConfigurationError(f"--model applies to {', '.join(sorted(VECTOR_STORES))}")
    with Progress(
        "[progress.description]{task.description}",
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=json,
    ) as progress:
        if rebuilt_in_place(settings, name):
            task = progress.add_task(f"{name}: archived events replayed", total=None)

            async def advance(n: int) -> None:
                progress.advance(task, n)

            applied = asyncio.run(rebuilding.rebuild_in_place(settings, name, advance))
            if json:
                print_json(
                    {"rebuilding": name, "in_place": True, "archived_events_applied": applied}
                )
            else:
                out.print(
                    f"{name}: emptied, {applied} archived events replayed; its workers replay the"
                    " stream"
                )
            return
        state = asyncio.run(_blue_green(settings, name, model, progress, wait, timeout))
    if json:
        print_json(
            {
                "rebuilding": name,
                "in_place": False,
                "live": state.live,
                "building": state.building,
                "retiring": state.retiring,
                "events_applied": state.applied,
            }
        )
    elif not state.done:
        out.print(
            f"{name}: generation {state.building or state.live} is being built or switched in"
            f" by the workers running {name} (live: {state.live}); `amem project rebuild {name}`"
            " follows it"
        )
    else:
        out.print(f"{name}: generation {state.live} is live; the old one is dropped")
    if wait and not state.done:
        raise typer.Exit(1)


async def _some_worker_reads(
    redis: aioredis.Redis, name: str, partitions: int, *, enriched: bool
) -> bool:
    """Whether a worker runs ``name``: one read in the last :data:`WORKER_GONE_S`, or within the
    next (a log server just restarted may show every consumer idle for long)."""
    deadline = time.monotonic() + WORKER_GONE_S
    while True:
        if await has_running_worker(redis, name, partitions, enriched=enriched):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(1.0)


async def _blue_green(
    settings: Settings,
    name: str,
    model: str | None,
    progress: Progress,
    wait: bool,
    limit_s: float,
) -> rebuilding.RebuildState:
    redis = connect(settings.require_redis())
    try:
        partitions = settings.runtime.partitions
        enriched = reads_enriched(name)
        if wait and not await _some_worker_reads(redis, name, partitions, enriched=enriched):
            raise ConfigurationError(
                f"no worker runs {name} (none has read for {WORKER_GONE_S:.0f} s), and the workers"
                f" build the new generation: start them, or pass --no-wait to leave the"
                " rebuild announced for when they start"
            )
        generation = await rebuilding.start_rebuild(redis, name, model)
        state = await rebuilding.rebuild_state(redis, name)
        if not wait:
            return state
        task = progress.add_task(f"{name}: generation {generation}, events replayed", total=None)
        deadline = time.monotonic() + limit_s if limit_s else None
        while deadline is None or time.monotonic() < deadline:
            state = await rebuilding.rebuild_state(redis, name)
            if state.building == generation:
                progress.update(task, completed=state.applied)
            elif state.retiring is not None:
                progress.update(
                    task, description=f"{name}: generation {generation} live, dropping the old one"
                )
            if state.done:
                return state
            await asyncio.sleep(rebuilding.POLL_S)
        return state
    finally:
        await redis.aclose()


@one_line_errors
def verify(
    projector: ProjectorOpt = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    erased: Annotated[
        bool,
        typer.Option(
            "--erased",
            help="Also prove the log server holds nothing of erased sessions and redacted"
            " messages, place by place.",
        ),
    ] = False,
    json: JsonFlag = False,
) -> None:
    """Prove each projection equals the log (ids, count, content hash per session).

    Exits 1 naming every difference, or a projection that could not be read. With
    --erased, erased sessions and redacted messages are also looked for in the log and
    enriched streams, the dead letters, the dedup keys and the server's query logs.
    """
    settings = Settings.from_env()
    names = list(select(settings, projector))
    verdicts, invalid = verify_now(settings, names, tenant)
    residue = asyncio.run(erased_residue(settings, tenant)) if erased else {}
    left = {e.name: r.places for e, r in residue.items() if r.total}
    redacted = sum(e.message_id is not None for e in residue)
    ok = all(v.ok for v in verdicts) and not left
    if json:
        print_json(
            {
                "ok": ok,
                "invalid_log_entries": invalid,
                "projections": [v.as_json() for v in verdicts],
                **(
                    {
                        "erased": {
                            "sessions": len(residue) - redacted,
                            "messages": redacted,
                            "residue": left,
                        }
                    }
                    if erased
                    else {}
                ),
            }
        )
    else:
        table = Table("projection", "sessions", "messages", "verdict", title="verify")
        for v in verdicts:
            verdict = "[green]equal to the log[/]" if v.ok else f"[red]{v.error or 'differs'}[/]"
            table.add_row(v.projection, str(v.sessions), str(v.messages), verdict)
        out.print(table)
        if invalid:
            out.print(f"{invalid} invalid log entries (dead-lettered, not messages)")
        for v in verdicts:
            for d in v.differences:
                err.print(f"{v.projection}: {d}", highlight=False)
        if erased:
            out.print(
                f"erased sessions: {len(residue) - redacted}, redacted messages: {redacted},"
                f" with residue on the log server: {len(left)}"
            )
            for name, places in left.items():
                err.print(f"{name}: still in {places}", highlight=False)
    if not ok:
        raise typer.Exit(1)


@dlq_app.command("list")
@one_line_errors
def dlq_list(
    projector: ProjectorOpt = None,
    count: Annotated[int, typer.Option(help="At most this many per projector.")] = 20,
    json: JsonFlag = False,
) -> None:
    """Dead letters: which entry, from which stream, and why."""
    settings = Settings.from_env()

    async def read() -> list[Any]:
        redis = connect(settings.require_redis())
        try:
            return [
                letter
                for name in select(settings, projector)
                for letter in await list_dead_letters(redis, name, count=count)
            ]
        finally:
            await redis.aclose()

    letters = asyncio.run(read())
    if json:
        print_json(
            [
                {
                    k: getattr(x, k)
                    for k in (
                        "id",
                        "projector",
                        "stream",
                        "entry_id",
                        "reason",
                        "deliveries",
                        "failed_at",
                    )
                }
                for x in letters
            ]
        )
        return
    table = Table("projector", "dlq id", "stream", "entry", "deliveries", "reason")
    for x in letters:
        table.add_row(x.projector, x.id, x.stream, x.entry_id, str(x.deliveries), x.reason)
    out.print(table)


@dlq_app.command("retry")
@one_line_errors
def dlq_retry(
    projector: Annotated[str, typer.Option("--projector", "-p", help="Whose dead letters.")],
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="Dead-letter ids; default all.")
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Put dead letters back on their stream (every group re-reads them; stores are idempotent)."""
    settings = Settings.from_env()
    select(settings, [projector])

    async def retry() -> int:
        redis = connect(settings.require_redis())
        try:
            return await retry_dead_letters(redis, projector, ids)
        finally:
            await redis.aclose()

    n = asyncio.run(retry())
    if json:
        print_json({"retried": n})
    else:
        out.print(f"{projector}: {n} dead letters put back on their streams")
