"""The client of the log server, whichever kind it is.

Every package takes the client as ``redis.asyncio.Redis``. For a cluster it is a
:class:`redis.asyncio.cluster.RedisCluster`, which offers the same keyed commands, routes
each by its key's slot, follows ``MOVED`` after a failover, splits multi-key ``DEL`` by slot
and scans every primary. What differs (keyless commands, per-node state, ``WAIT``) is in
:mod:`logserver.nodes`.
"""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis
from faststream.redis import RedisBroker, RedisClusterBroker
from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio.cluster import ClusterNode, RedisCluster

from logserver.url import LogServerUrl


def connect(url: str, **options: Any) -> aioredis.Redis:
    """A client of the log server ``url`` names; ``options`` go to redis-py's client."""
    parsed = LogServerUrl.parse(url)
    if not parsed.cluster:
        return aioredis.Redis.from_url(url, **options)
    _route_stream_reads_locally()
    options.pop("health_check_interval", None)  # per-node in a cluster: not an option
    cluster = RedisCluster.from_url(
        parsed.node_url,
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.seeds[1:]],
        # Slots whose master is failing over answer CLUSTERDOWN; the others keep serving.
        require_full_coverage=False,
        **options,
    )
    # Same command API for keyed commands (see the module docstring).
    return cast(aioredis.Redis, cluster)


def is_cluster(client: aioredis.Redis) -> bool:
    return isinstance(client, RedisCluster)


def broker(url: str, **options: Any) -> RedisBroker:
    """The FastStream broker of the workers: ``RedisClusterBroker`` for a cluster."""
    parsed = LogServerUrl.parse(url)
    if not parsed.cluster:
        return RedisBroker(url, **options)
    _route_stream_reads_locally()
    return RedisClusterBroker(parsed.node_url, startup_nodes=list(parsed.seeds[1:]), **options)


_STREAM_READS = frozenset({"xread", "xreadgroup"})


def _token(arg: Any) -> str:
    return (arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)).lower()


def _route_stream_reads_locally() -> None:
    """Have redis-py's cluster client find the keys of ``XREADGROUP``/``XREAD`` itself.

    Their keys are "movable", so redis-py 8.1 asks one fixed node (the first it knew)
    ``COMMAND GETKEYS`` before every read: a round trip more per read and, once that node
    dies in a failover, every read of every stream fails (and concurrent reconnects of
    that node's connection break it for good). The keys are the stream names after
    ``STREAMS`` (the first half of what follows). Every other command is left alone.
    """
    if getattr(AsyncCommandsParser, "_amem_stream_keys", False):
        return
    asked_a_node = AsyncCommandsParser._get_moveable_keys

    async def moveable_keys(self: AsyncCommandsParser, *args: Any) -> tuple[Any, ...] | None:
        if _token(args[0]) in _STREAM_READS:
            for i, arg in enumerate(args):
                if _token(arg) == "streams":
                    rest = args[i + 1 :]
                    return tuple(rest[: len(rest) // 2])
        return await asked_a_node(self, *args)

    AsyncCommandsParser._get_moveable_keys = moveable_keys  # type: ignore[method-assign]
    AsyncCommandsParser._amem_stream_keys = True  # type: ignore[attr-defined]
