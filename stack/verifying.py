"""Where ``amem verify`` reads each projection's digest from.

Every store is opened directly, except one that a running worker holds exclusively (Qdrant
in local mode): that worker is asked for the digest over the log server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson

from logserver import broker, connect
from projectors.lag import WORKER_GONE_S, has_running_worker
from projectors.records import Digest
from projectors.stores.archive import PostgresArchiveStore
from rehydrator.erase import Erasure, Residue, purge
from rehydrator.verify import DigestSource, Verdict, enriched_digest, log_digest, verify
from schemas.constants import ARCHIVE, ENRICHER, digest_request_key
from schemas.errors import ConfigurationError
from stack.projections import build_live_store, build_store, qdrant_is_local, reads_enriched
from stack.settings import Settings
from stack.worker_pool import running

ASK_TIMEOUT_S = 120.0


async def _from_store(settings: Settings, name: str, tenant_id: str | None) -> Digest:
    redis = connect(settings.require_redis())
    try:
        store = await build_live_store(settings, name, redis)
    finally:
        await redis.aclose()
    try:
        await store.start()
        return await store.digest(tenant_id)
    finally:
        await store.close()


async def _from_local_qdrant(settings: Settings, tenant_id: str | None) -> Digest:
    """Qdrant's local files, or the worker holding them: one run by ``amem project run`` or
    ``faststream run`` is not among the workers ``amem project start`` records."""
    try:
        return await _from_store(settings, "qdrant", tenant_id)
    except RuntimeError as exc:
        if "already accessed by another instance" not in str(exc):
            raise
        return await _from_worker(settings, "qdrant", tenant_id)


async def _from_worker(settings: Settings, name: str, tenant_id: str | None) -> Digest:
    redis = connect(settings.require_redis())
    try:
        answering = await has_running_worker(
            redis, name, settings.runtime.partitions, enriched=reads_enriched(name)
        )
    finally:
        await redis.aclose()
    if not answering:
        raise ConfigurationError(
            f"{settings.qdrant_path} is held by a process that runs no {name} worker (none"
            f" has read for {WORKER_GONE_S:.0f} s): stop it, or start the workers"
        )
    async with broker(settings.require_redis()) as rpc:
        reply = await rpc.request(
            {"tenant_id": tenant_id}, list=digest_request_key(name), timeout=ASK_TIMEOUT_S
        )
    rows = orjson.loads(reply.body)
    return {(t, s): ids for t, s, ids in rows}


async def run_verify(
    settings: Settings, names: Sequence[str], tenant_id: str | None
) -> tuple[list[Verdict], int]:
    """Verdicts per projection, and the number of invalid log entries."""
    redis = connect(settings.require_redis())
    partitions, limits = settings.runtime.partitions, settings.runtime.limits
    archive = build_store(settings, ARCHIVE)
    assert isinstance(archive, PostgresArchiveStore)
    try:
        await archive.start()
        expected, invalid = await log_digest(
            redis, partitions, tenant_id=tenant_id, limits=limits, archive=archive
        )

        def source(name: str) -> DigestSource:
            if name == ENRICHER:
                return lambda t: enriched_digest(
                    redis, partitions, tenant_id=t, limits=limits, archive=archive
                )
            if name == "qdrant" and qdrant_is_local(settings):
                if running(settings):
                    return lambda t: _from_worker(settings, name, t)
                return lambda t: _from_local_qdrant(settings, t)
            return lambda t: _from_store(settings, name, t)

        verdicts = await verify(expected, {n: source(n) for n in names}, tenant_id=tenant_id)
    finally:
        await archive.close()
        await redis.aclose()
    return verdicts, invalid


def verify_now(
    settings: Settings, names: Sequence[str], tenant_id: str | None
) -> tuple[list[Verdict], int]:
    return asyncio.run(run_verify(settings, names, tenant_id))


async def erased_residue(settings: Settings, tenant_id: str | None) -> dict[Erasure, Residue]:
    """Per latest erase of a session and latest redaction of a message, what the log server
    still holds of what it covers, place by place: empty when it reached everything."""
    archive = build_store(settings, ARCHIVE, pool_size=1)
    assert isinstance(archive, PostgresArchiveStore)
    await archive.start()
    try:
        erased = await archive.erasures(tenant_id)
    finally:
        await archive.close()
    redis = connect(settings.require_redis())
    out = {}
    try:
        for tenant, session, message, partition, position in erased:
            erasure = Erasure(
                tenant_id=tenant,
                session_id=session,
                partition=partition,
                position=position,
                message_id=message,
            )
            out[erasure] = await purge(redis, erasure, delete=False)
    finally:
        await redis.aclose()
    return out
