"""The log server: one redis-server (or Dragonfly), or a Redis Cluster.

A ``redis+cluster://`` (or ``rediss+cluster://``) URL names a cluster by one or more seed
nodes; every other URL names one server. :func:`connect` gives the client every package
uses, :func:`broker` the FastStream broker of the workers.
"""

from logserver.client import broker, connect, is_cluster
from logserver.url import LogServerUrl

__all__ = ["LogServerUrl", "broker", "connect", "is_cluster"]
