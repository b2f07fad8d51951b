"""``$AMEM_HOME/stack.json``: what ``amem up`` started, so every other command finds it."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

STATE_FILE = "stack.json"


@dataclass(frozen=True, kw_only=True, slots=True)
class ServiceRecord:
    url: str
    pid: int | None = None
    port: int | None = None


@dataclass(kw_only=True, slots=True)
class StackState:
    home: Path
    services: dict[str, ServiceRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, home: Path) -> StackState:
        path = home / STATE_FILE
        try:
            raw = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return cls(home=home)
        services = {name: ServiceRecord(**record) for name, record in raw["services"].items()}
        return cls(home=home, services=services)

    def save(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        body = {"services": {name: asdict(rec) for name, rec in self.services.items()}}
        tmp = self.home / f"{STATE_FILE}.tmp"
        tmp.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.home / STATE_FILE)

    def urls(self) -> dict[str, str]:
        """URLs of the services recorded as running."""
        return {name: rec.url for name, rec in self.services.items() if rec.pid is not None}
