"""The HTTP API: append, rehydrate, read and erase a session's memory from any language.

The tenant of a request is always its API key's (``Authorization: Bearer <key>`` or
``X-API-Key``), never a field of the path or the body, so a key for one tenant can neither
read nor write another's sessions. Routes and formats: ``docs/http-api.md``.

The app is built from what it needs (keys, and factories of the producer and the
rehydrator it opens for its lifetime), not from ``stack`` settings: ``stack/serve.py`` wires
those in.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from producer import Producer
from rehydrator import http_errors
from rehydrator.http_keys import ApiKeys
from rehydrator.http_paths import EncodedSlashes
from rehydrator.http_routes import AppState, HealthCache, HealthCheck, Opened, v1
from rehydrator.rehydrate import Rehydrator

API_VERSION = "1.0.0"
MAX_BODY_BYTES = 32 * 1024 * 1024
"""Request bodies over this are refused (413) before being read: 1000 messages of the
largest size would be ~270 MB held in memory per request."""

RehydratorFactory = Callable[[], AbstractAsyncContextManager[Rehydrator]]
ProducerFactory = Callable[[], AbstractAsyncContextManager[Producer]]


def create_app(
    *,
    keys: ApiKeys,
    open_producer: ProducerFactory,
    open_rehydrator: RehydratorFactory,
    check_health: HealthCheck,
    max_body_bytes: int = MAX_BODY_BYTES,
    erase_wait_s: float = 30.0,
) -> FastAPI:
    """The API; its lifespan opens the producer and the rehydrator once, for every request."""
    log = logging.getLogger("rehydrator.http.App")
    state = AppState(
        keys=keys, health=HealthCache(check_health), open=[], erase_wait_s=erase_wait_s
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            producer = await stack.enter_async_context(open_producer())
            rehydrator = await stack.enter_async_context(open_rehydrator())
            state.open.append(Opened(producer, rehydrator))
            log.info("serving %s", "in local mode" if keys.local else "with API keys")
            try:
                yield
            finally:
                state.open.clear()

    app = FastAPI(
        title="Atomic Memory",
        version=API_VERSION,
        summary="Durable memory for AI agents: append, rehydrate, read and erase sessions.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.amem = state
    app.include_router(v1)
    http_errors.install(app, max_body_bytes=max_body_bytes)
    app.add_middleware(EncodedSlashes)
    return app
