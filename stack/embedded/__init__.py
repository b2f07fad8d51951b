"""The embedded default: Redis 8 + FalkorDB, Postgres 16 + pgvector and a MongoDB wire server,
all from PyPI wheels, run in the background under ``AMEM_HOME`` with no Docker and no root."""
