"""Erase from the command line and the HTTP API: append the erase events, optionally wait.

``erase_sessions`` appends one ``session.erased`` per session, ``redact_message`` one
``message.redacted``; with a timeout each then waits until every group has applied the
events and purges the log server (rehydrator.erase).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from logserver import connect
from producer import Producer
from projectors.position import Position
from projectors.stores.archive import PostgresArchiveStore
from projectors.streams import pages
from rehydrator.erase import Erasure, Residue, session_of, wait_and_purge
from schemas.constants import ARCHIVE, ENTRY_FIELD, log_key
from schemas.events import MessageRedacted, SessionErased
from stack.projections import build_store
from stack.settings import Settings


@dataclass(kw_only=True, slots=True)
class EraseReport:
    """What an erase appended and, when waited for, what it purged and what is left."""

    tenant_id: str
    erased: list[Erasure]
    waited: bool = False
    purged: Residue = field(default_factory=Residue)
    left: dict[str, list[str]] = field(default_factory=dict)
    log_files: str | None = None

    @property
    def done(self) -> bool:
        return self.waited and not self.left

    def as_json(self) -> dict[str, object]:
        return {
            "tenant_id": self.tenant_id,
            "erased": [
                {
                    "session_id": e.session_id,
                    **({} if e.message_id is None else {"message_id": e.message_id}),
                    "partition": e.partition,
                    "position": str(e.position),
                }
                for e in self.erased
            ],
            "waited": self.waited,
            "done": self.done,
            "purged": self.purged.places,
            "left": self.left,
            "log_files": self.log_files,
        }


async def erase_sessions(
    settings: Settings,
    tenant_id: str,
    sessions: Sequence[str],
    *,
    reason: str | None = None,
    wait_s: float | None = None,
    producer: Producer | None = None,
) -> EraseReport:
    """Append an erase per session; with ``wait_s``, wait for it to reach everything."""
    events = [SessionErased(tenant_id=tenant_id, session_id=s, reason=reason) for s in sessions]
    return await _erase(settings, tenant_id, events, wait_s=wait_s, producer=producer)


async def redact_message(
    settings: Settings,
    tenant_id: str,
    session_id: str,
    message_id: str,
    *,
    reason: str | None = None,
    wait_s: float | None = None,
    producer: Producer | None = None,
) -> EraseReport:
    """Append a redaction of one message; with ``wait_s``, wait for it to reach everything."""
    event = MessageRedacted(
        tenant_id=tenant_id, session_id=session_id, message_id=message_id, reason=reason
    )
    return await _erase(settings, tenant_id, [event], wait_s=wait_s, producer=producer)


async def _erase(
    settings: Settings,
    tenant_id: str,
    events: Sequence[SessionErased | MessageRedacted],
    *,
    wait_s: float | None,
    producer: Producer | None,
) -> EraseReport:
    if producer is None:
        async with Producer.from_url(settings.require_redis(), settings.producer) as own:
            results = await own.append_events(events)
    else:
        results = await producer.append_events(events)
    report = EraseReport(
        tenant_id=tenant_id,
        erased=[
            Erasure(
                tenant_id=tenant_id,
                session_id=e.session_id,
                partition=r.partition,
                position=Position.parse(r.stream_id),
                message_id=e.message_id if isinstance(e, MessageRedacted) else None,
            )
            for e, r in zip(events, results, strict=True)
        ],
    )
    if wait_s is None:
        return report
    redis = connect(settings.require_redis())
    try:
        report.purged, report.left, report.log_files = await wait_and_purge(
            redis, report.erased, settings.runtime.partitions, timeout_s=wait_s
        )
    finally:
        await redis.aclose()
    report.waited = True
    return report


async def tenant_sessions(settings: Settings, tenant_id: str) -> list[str]:
    """Every session of the tenant the log knows of: archived, or still only in the stream."""
    archive = build_store(settings, ARCHIVE, pool_size=1)
    assert isinstance(archive, PostgresArchiveStore)
    await archive.start()
    try:
        found = set(await archive.sessions(tenant_id))
    finally:
        await archive.close()
    redis = connect(settings.require_redis())
    try:
        for n in range(settings.runtime.partitions):
            async for page in pages(redis, log_key(n)):
                for _, fields in page:
                    tenant, session = session_of(fields.get(ENTRY_FIELD.encode()))
                    if tenant == tenant_id and session is not None:
                        found.add(session)
    finally:
        await redis.aclose()
    return sorted(found)
