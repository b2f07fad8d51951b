"""Postgres 16 + pgvector from the ``pgserver`` wheel (Unix socket only).

pgserver runs the server as a daemon that outlives the process that started it; once that
process is gone pgserver can no longer stop it, so we stop it with ``pg_ctl`` on the data
directory, as the system user that owns it.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

from stack.embedded.process import StackError, is_alive
from stack.embedded.state import ServiceRecord

with warnings.catch_warnings():
    # pgserver warns on import when XDG_RUNTIME_DIR is unset (it then uses /tmp): harmless.
    warnings.simplefilter("ignore")
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.postgres_server import get_server

MARKER = "postgres"
_SYSTEM_USER = "pgserver"  # pgserver's own choice when it runs as root


class EmbeddedPostgres:
    name = "postgres"

    def __init__(self, home: Path) -> None:
        self.pgdata = home / "postgres"

    def start(self, previous: ServiceRecord | None) -> ServiceRecord:
        if previous is not None and self.is_running(previous):
            return previous
        try:
            server = get_server(self.pgdata, cleanup_mode=None)
            # A process that started the server before holds a cached handle, which
            # get_server returns as is even if the server was stopped or killed since.
            server.ensure_postgres_running()
        except Exception as exc:  # pgserver raises bare CalledProcessError/AssertionError
            raise StackError(f"postgres failed to start: {exc}; see {self.pgdata / 'log'}") from exc
        return ServiceRecord(url=server.get_uri(), pid=server.get_pid())

    def stop(self, record: ServiceRecord) -> None:
        if not self.is_running(record):
            return
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast", "stop"],
            user=_SYSTEM_USER if os.geteuid() == 0 else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=True,
        )

    def is_running(self, record: ServiceRecord) -> bool:
        return is_alive(record.pid, MARKER)
