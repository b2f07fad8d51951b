"""The ``nx-27017`` MongoDB wire-protocol server (SQLite underneath)."""

from __future__ import annotations

import sys
from pathlib import Path

from stack.embedded.process import DetachedServer

_LAUNCH = "import sys; from nx_27017.nx_27017 import main; sys.exit(main())"


class EmbeddedMongo(DetachedServer):
    name = "mongo"
    marker = "nx_27017"
    log_name = "nx-27017.log"

    def argv(self, port: int, log: Path) -> list[str]:
        # Log and pid paths are always ours: the defaults under /tmp are shared by every
        # instance on the machine.
        return [
            sys.executable, "-c", _LAUNCH,
            "--data-dir", str(self.dir / "data"),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--log-file", str(log),
            "--pid-file", str(self.dir / "nx-27017.pid"),
        ]  # fmt: skip

    def url(self, port: int) -> str:
        return f"mongodb://127.0.0.1:{port}/?directConnection=true"

    def wait_ready(self, port: int, log: Path) -> None:
        """nx-27017 serves requests as soon as its port is open."""
