"""The append API: validated, partitioned, idempotent appends to the log."""

from producer.errors import (
    DurabilityError,
    LogUnavailableError,
    PartitionMismatchError,
    ProducerError,
)
from producer.producer import AppendResult, Producer, connect_redis
from producer.settings import Durability, ProducerSettings

__all__ = [
    "AppendResult",
    "Durability",
    "DurabilityError",
    "LogUnavailableError",
    "PartitionMismatchError",
    "Producer",
    "ProducerError",
    "ProducerSettings",
    "connect_redis",
]
