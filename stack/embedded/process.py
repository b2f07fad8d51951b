"""Start and stop detached server processes without holding the caller's pipes."""

from __future__ import annotations

import os
import signal
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from schemas.errors import AmemError
from stack.embedded.state import ServiceRecord


class StackError(AmemError):
    """An embedded service failed to start or stop."""


def free_port(preferred: int = 0) -> int:
    """``preferred`` when it is free (keeps URLs stable across restarts), else any free port."""
    for candidate in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            # As the servers do: connections of a killed server in TIME_WAIT keep no one
            # from listening on its port again.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port: int = sock.getsockname()[1]
            return port
    raise StackError("no free TCP port on 127.0.0.1")


def spawn(
    argv: Sequence[str], *, log: Path | None = None, env: Mapping[str, str] | None = None
) -> int:
    """Start a process in its own session, stdin on /dev/null; returns its pid.

    stdout and stderr go to ``log`` (appended) or /dev/null: a child that inherits our stdout
    keeps a caller's pipe open (``make run | tee`` would hang), and its own session keeps it
    alive when the terminal or the caller goes away. ``posix_spawn`` rather than ``Popen``:
    the child outlives us, there is nothing to wait on.
    """
    out = os.devnull if log is None else str(log)
    flags = os.O_WRONLY if log is None else os.O_WRONLY | os.O_CREAT | os.O_APPEND
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, out, flags, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    environ = os.environ if env is None else env
    return os.posix_spawn(argv[0], list(argv), environ, file_actions=actions, setsid=True)


def is_alive(pid: int | None, marker: str) -> bool:
    """Whether ``pid`` runs a process whose command line contains ``marker`` (guards PID reuse)."""
    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return any(marker in part for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def has_exited(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for_port(port: int, *, pid: int, name: str, timeout: float, log: Path) -> None:
    # Not `is_alive`: redis-server rewrites its command line (process title) while it starts,
    # so a marker check can miss a live child; the pid is ours and fresh, so exit is enough.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if has_exited(pid):
            raise StackError(f"{name} exited during start-up; see {log}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise StackError(f"{name} did not open port {port} within {timeout:.0f} s; see {log}")


def terminate(pid: int, marker: str, *, timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: the process is gone when this returns."""
    if not is_alive(pid, marker):
        return
    os.kill(pid, signal.SIGTERM)
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass


class DetachedServer(ABC):
    """A server we run as a detached process on a loopback TCP port under ``AMEM_HOME``."""

    name: str
    marker: str
    """A string of the process's command line, to tell our process from a reused PID."""
    log_name: str
    start_timeout: float = 30.0

    def __init__(self, home: Path, *, port: int = 0) -> None:
        self.dir = home / self.name
        self.port = port

    @abstractmethod
    def argv(self, port: int, log: Path) -> list[str]: ...

    @abstractmethod
    def url(self, port: int) -> str: ...

    def start(self, previous: ServiceRecord | None) -> ServiceRecord:
        if previous is not None and self.is_running(previous):
            return previous
        self.dir.mkdir(parents=True, exist_ok=True)
        port = free_port(self.port or (previous.port if previous else 0) or 0)
        log = self.dir / self.log_name
        pid = spawn(self.argv(port, log))
        wait_for_port(port, pid=pid, name=self.name, timeout=self.start_timeout, log=log)
        self.wait_ready(port, log)
        return ServiceRecord(url=self.url(port), pid=pid, port=port)

    @abstractmethod
    def wait_ready(self, port: int, log: Path) -> None:
        """Return once the server answers requests (an open port can come earlier)."""

    def stop(self, record: ServiceRecord) -> None:
        if record.pid is not None:
            terminate(record.pid, self.marker)

    def is_running(self, record: ServiceRecord) -> bool:
        return is_alive(record.pid, self.marker)
