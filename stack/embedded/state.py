"""``$AMEM_HOME/stack.json``: what ``amem up`` started, so every other command finds it."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

STATE_FILE = "stack.json"


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeRecord:
    """One redis-server of an embedded cluster: its ports are kept across restarts, since
    every node's cluster config names its peers by them."""

    port: int
    bus_port: int
    pid: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ServiceRecord:
    url: str
    pid: int | None = None
    port: int | None = None
    nodes: tuple[NodeRecord, ...] = ()
    """An embedded cluster's nodes (masters first); empty for a single server."""
    replicas: int = 0
    """An embedded cluster's replicas per master."""

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ServiceRecord:
        nodes = tuple(NodeRecord(**node) for node in raw.pop("nodes", ()))
        return cls(**raw, nodes=nodes)


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
        services = {
            name: ServiceRecord.from_json(record) for name, record in raw["services"].items()
        }
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
