"""Parsing a log-server URL: one server, or a Redis Cluster named by its seed nodes."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from schemas.errors import ConfigurationError

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""Cluster scheme → the scheme each node is reached with."""
DEFAULT_PORT = 6379


@dataclass(frozen=True, kw_only=True, slots=True)
class LogServerUrl:
    """A parsed log-server URL.

    ``redis+cluster://[user:password@]host1:port1,host2:port2/`` names a cluster by any of
    its nodes (the client learns the rest from them); ``redis://``, ``rediss://`` and
    ``unix://`` name one server.
    """

    cluster: bool
    seeds: tuple[tuple[str, int], ...]
    """Cluster: the seed nodes given; one server: empty."""
    node_url: str
    """A plain URL of the first seed (the server itself, when not a cluster): credentials,
    TLS and query options kept; what single-server libraries are given."""

    @classmethod
    def parse(cls, url: str) -> LogServerUrl:
        parts = urlsplit(url)
        scheme = CLUSTER_SCHEMES.get(parts.scheme)
        if scheme is None:
            return cls(cluster=False, seeds=(), node_url=url)
        credentials, _, hosts = parts.netloc.rpartition("@")
        seeds = tuple(_host_port(h, url) for h in hosts.split(",") if h.strip())
        if not seeds:
            raise ConfigurationError(f"log-server URL {url!r} names no cluster node")
        host, port = seeds[0]
        netloc = f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"
        # A cluster has one database: the path (a db number) is dropped.
        node_url = urlunsplit((scheme, netloc, "", parts.query, ""))
        return cls(cluster=True, seeds=seeds, node_url=node_url)

    def with_node(self, host: str, port: int) -> str:
        """The plain URL of another node of the same cluster (same credentials and TLS)."""
        parts = urlsplit(self.node_url)
        credentials, _, _ = parts.netloc.rpartition("@")
        netloc = f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def cluster_url(nodes: list[tuple[str, int]]) -> str:
    """The ``redis+cluster://`` URL naming ``nodes`` as seeds."""
    return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in nodes)


def _host_port(raw: str, url: str) -> tuple[str, int]:
    host, sep, port = raw.strip().rpartition(":")
    if not sep:
        return raw.strip(), DEFAULT_PORT
    if not port.isdigit():
        raise ConfigurationError(f"log-server URL {url!r}: bad port in {raw!r}")
    return host.strip("[]"), int(port)
