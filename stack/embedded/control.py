"""``amem up`` / ``amem down``: start and stop the embedded services under ``AMEM_HOME``."""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Protocol

from stack.embedded.mongo_server import EmbeddedMongo
from stack.embedded.postgres_server import EmbeddedPostgres
from stack.embedded.process import StackError
from stack.embedded.redis_cluster import EmbeddedRedisCluster
from stack.embedded.redis_server import EmbeddedRedis
from stack.embedded.state import ServiceRecord, StackState
from stack.settings import Settings

_log = logging.getLogger(__name__)


class EmbeddedService(Protocol):
    name: str

    def start(self, previous: ServiceRecord | None) -> ServiceRecord: ...

    def stop(self, record: ServiceRecord) -> None: ...

    def is_running(self, record: ServiceRecord) -> bool: ...


def embedded_services(
    settings: Settings, *, masters: int = 0, replicas: int = 0
) -> list[EmbeddedService]:
    """The services of the embedded stack; the log server is a cluster of ``masters``
    (``replicas`` each) when asked, or when this home already holds one."""
    home = settings.home
    recorded = StackState.load(home).services.get("redis")
    if not masters and recorded is not None and recorded.nodes:
        replicas = recorded.replicas
        masters = len(recorded.nodes) // (1 + replicas)
    log_server: EmbeddedService = (
        EmbeddedRedisCluster(
            home,
            masters=masters,
            replicas=replicas,
            appendfsync=settings.redis_appendfsync,
            node_timeout_ms=settings.cluster_node_timeout_ms,
        )
        if masters
        else EmbeddedRedis(home, appendfsync=settings.redis_appendfsync, port=settings.redis_port)
    )
    return [log_server, EmbeddedPostgres(home), EmbeddedMongo(home, port=settings.mongo_port)]


@contextmanager
def _locked(settings: Settings) -> Iterator[StackState]:
    """Serialise concurrent ``up``/``down`` on one home; yields its state, saved on exit."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with (settings.home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = StackState.load(settings.home)
        try:
            yield state
        finally:
            state.save()


def up(settings: Settings, *, cluster: int = 0, replicas: int = 0) -> StackState:
    """Start every service not already running (services start concurrently); the log
    server as a cluster of ``cluster`` masters with ``replicas`` each, if asked."""
    with _locked(settings) as state:
        services = embedded_services(settings, masters=cluster, replicas=replicas)
        with ThreadPoolExecutor(len(services)) as pool:
            futures = {
                svc.name: pool.submit(svc.start, state.services.get(svc.name)) for svc in services
            }
        failures = []
        for name, future in futures.items():
            try:
                state.services[name] = future.result()
            except StackError as exc:
                failures.append(f"{name}: {exc}")
        if failures:
            raise StackError("; ".join(failures))
        return state


def down(settings: Settings) -> list[str]:
    """Stop every recorded service; returns the names that were running."""
    stopped = []
    with _locked(settings) as state:
        for svc in embedded_services(settings):
            record = state.services.get(svc.name)
            if record is None or record.pid is None:
                continue
            if svc.is_running(record):
                svc.stop(record)
                stopped.append(svc.name)
            nodes = tuple(replace(node, pid=None) for node in record.nodes)
            state.services[svc.name] = replace(record, pid=None, nodes=nodes)
    return stopped


def running(settings: Settings) -> dict[str, bool]:
    """Per embedded service: whether its recorded process is alive."""
    state = StackState.load(settings.home)
    return {
        svc.name: (rec := state.services.get(svc.name)) is not None and svc.is_running(rec)
        for svc in embedded_services(settings)
    }
