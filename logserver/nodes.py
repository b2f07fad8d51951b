"""Talking to the nodes of a cluster one by one, where routing by key does not serve.

redis-py's ``RedisCluster`` routes each keyed command to its slot's master. Two things of
ours need more: the append sends its script calls together with ``WAITAOF`` and ``WAIT``,
which confirm only the writes of the connection they are sent on, so all must go down one
connection to the master (released redis-py also refuses ``EVALSHA`` inside a cluster
pipeline); and per-node state (memory, AOF rewrites, roles) must ask every node.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, ClusterDownError, ReadOnlyError, TryAgainError

from logserver.client import is_cluster

T = TypeVar("T")

REDIRECTS: tuple[type[Exception], ...] = (AskError, TryAgainError, ClusterDownError, ReadOnlyError)
"""Replies meaning "the slot is (being) served elsewhere" (``MOVED`` is an ``AskError``; a
demoted master answers ``READONLY``): refresh the topology, resend."""


def is_redirect(exc: Exception) -> bool:
    return isinstance(exc, REDIRECTS)


class SlotMovedError(Exception):
    """A slot is served by another node now, or by none yet (a failover, a reshard)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Route:
    """Where one key's slot is served now."""

    node: str
    """``host:port`` of the slot's master."""
    client: aioredis.Redis
    """A plain client of that master: one pipeline there is one connection."""
    replicas: int
    """Replicas of that master the cluster knows as up."""


class NodeClients:
    """Plain clients of a cluster's masters, one per node, made on first use."""

    def __init__(self, cluster: aioredis.Redis, **options: Any) -> None:
        assert is_cluster(cluster)
        self._cluster = cast(RedisCluster, cluster)
        self._options = options
        self._clients: dict[str, aioredis.Redis] = {}

    def route(self, key: str) -> Route:
        slot = self._cluster.keyslot(key)
        served = self._cluster.nodes_manager.slots_cache.get(slot)
        if not served:
            raise SlotMovedError(f"no node serves slot {slot} (key {key!r})")
        master = served[0]
        return Route(node=master.name, client=self._client(master), replicas=len(served) - 1)

    async def refresh(self) -> None:
        """Learn the topology again (after a redirect or a dead node)."""
        await self._cluster.nodes_manager.initialize()

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def _client(self, node: ClusterNode) -> aioredis.Redis:
        client = self._clients.get(node.name)
        if client is None:
            client = self._clients[node.name] = aioredis.Redis(
                host=node.host, port=int(node.port), **_auth(node), **self._options
            )
        return client


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeState:
    """One node of the log server as ``amem status`` shows it."""

    address: str
    role: str
    """``master`` or ``replica`` (a single server: ``master``)."""
    slots: str
    """The slot ranges it serves (``0-5460``); a replica: those of its master; a single
    server: ``all``."""
    up: bool
    master: str | None = None
    """A replica's master (``host:port``)."""


async def on_every_node(
    client: aioredis.Redis,
    call: Callable[[aioredis.Redis], Awaitable[T]],
    *,
    replicas: bool = True,
) -> list[T]:
    """``call`` on each node (masters, and replicas unless told not to); a single server:
    on it alone."""
    if not is_cluster(client):
        return [await call(client)]
    cluster = cast(RedisCluster, client)
    out = []
    nodes = cluster.get_nodes() if replicas else cluster.get_primaries()
    for node in nodes:
        single = aioredis.Redis(host=node.host, port=int(node.port), **_auth(node))
        try:
            out.append(await call(single))
        finally:
            await single.aclose()
    return out


async def used_memory(client: aioredis.Redis) -> int:
    """``used_memory`` of the log server: summed over the masters of a cluster."""

    async def one(node: aioredis.Redis) -> int:
        return int((await node.info("memory"))["used_memory"])

    return sum(await on_every_node(client, one, replicas=False))


async def topology(client: aioredis.Redis) -> list[NodeState]:
    """Every node, its role and slots, as ``CLUSTER NODES`` says (a single server: one)."""
    if not is_cluster(client):
        return [NodeState(address="-", role="master", slots="all", up=True)]
    nodes = cast(dict[str, dict[str, Any]], await cast(RedisCluster, client).cluster_nodes())
    return nodes_state(nodes)


def nodes_state(nodes: dict[str, dict[str, Any]]) -> list[NodeState]:
    """redis-py's parsed ``CLUSTER NODES`` as :class:`NodeState`, masters first."""
    address_of = {node["node_id"]: address for address, node in nodes.items()}
    slots_of = {
        node["node_id"]: " ".join(f"{a}-{b}" if a != b else a for a, b in node["slots"]) or "-"
        for node in nodes.values()
    }
    out = []
    for address, node in nodes.items():
        flags = node["flags"].split(",")
        up = bool(node["connected"]) and "fail" not in flags and "fail?" not in flags
        if "master" in flags:
            out.append(
                NodeState(address=address, role="master", slots=slots_of[node["node_id"]], up=up)
            )
        else:
            master = node["master_id"]
            out.append(
                NodeState(
                    address=address,
                    role="replica",
                    slots=slots_of.get(master, "-"),
                    up=up,
                    master=address_of.get(master),
                )
            )
    return sorted(out, key=lambda n: (n.role != "master", n.address))


def _auth(node: ClusterNode) -> dict[str, Any]:
    return {k: v for k, v in node.connection_kwargs.items() if k in ("username", "password", "ssl")}
