"""Prometheus metrics of a worker process, as a :class:`~projectors.hooks.Middleware`."""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from projectors.hooks import Middleware
from projectors.position import Position
from projectors.retention import LogState


class PrometheusMiddleware(Middleware):
    """Counts what the worker does; serves ``/metrics`` on ``port`` while it runs (0: no server).

    Each instance has its own registry, so several workers can share a process (tests).
    """

    def __init__(self, *, port: int = 0) -> None:
        self.port = port
        self.registry = registry = CollectorRegistry()
        self._server: WSGIServer | None = None
        self.applied = Counter(
            "amem_applied", "Records applied to a store", ["projector"], registry=registry
        )
        self.dead_lettered = Counter(
            "amem_dead_lettered", "Entries dead-lettered", ["projector"], registry=registry
        )
        self.retries = Counter(
            "amem_store_retries",
            "Batches retried: store unavailable",
            ["projector"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "amem_batch_seconds",
            "Time to apply and acknowledge one batch",
            ["projector"],
            registry=registry,
        )
        self.embedded = Counter(
            "amem_embedded_texts", "Texts embedded by this process", registry=registry
        )
        self.lag = Gauge(
            "amem_lag",
            "Entries not yet delivered to the projector's group",
            ["projector", "partition"],
            registry=registry,
        )
        self.pending = Gauge(
            "amem_pending",
            "Entries delivered but not acknowledged",
            ["projector", "partition"],
            registry=registry,
        )

        self.hot_entries = Gauge(
            "amem_log_hot_entries",
            "Entries a stream of the log server holds (the hot window)",
            ["stream", "partition"],
            registry=registry,
        )
        self.oldest_ms = Gauge(
            "amem_log_oldest_entry_ms",
            "Time part of the id of a stream's oldest entry (0: empty)",
            ["stream", "partition"],
            registry=registry,
        )
        self.archived_ms = Gauge(
            "amem_archive_position_ms",
            "Time part of the furthest log id the archive holds per partition",
            ["partition"],
            registry=registry,
        )
        self.memory = Gauge(
            "amem_log_server_memory_bytes", "used_memory of the log server", registry=registry
        )

    def after_startup(self) -> None:
        if self.port:
            self._server, _ = start_http_server(self.port, registry=self.registry)

    def after_shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def after_apply(self, projector: str, applied: int, seconds: float) -> None:
        self.applied.labels(projector).inc(applied)
        self.batch_seconds.labels(projector).observe(seconds)

    def after_dead_letter(self, projector: str, count: int) -> None:
        self.dead_lettered.labels(projector).inc(count)

    def after_retry(self, projector: str, error: BaseException) -> None:
        self.retries.labels(projector).inc()

    def after_embed(self, texts: int, seconds: float) -> None:
        self.embedded.inc(texts)

    def on_lag(self, projector: str, partition: int, lag: int, pending: int) -> None:
        self.lag.labels(projector, str(partition)).set(lag)
        self.pending.labels(projector, str(partition)).set(pending)

    def after_trim(self, state: LogState) -> None:
        self.memory.set(state.memory_bytes)
        for p in state.partitions:
            partition = str(p.partition)
            for kind, stream in (("log", p.log), ("enriched", p.enriched)):
                self.hot_entries.labels(kind, partition).set(stream.hot)
                oldest = Position.parse(stream.oldest).ms if stream.oldest else 0
                self.oldest_ms.labels(kind, partition).set(oldest)
            if p.archived is not None:
                self.archived_ms.labels(partition).set(p.archived.ms)
