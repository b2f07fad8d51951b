"""The HTTP API wired to the configured log and stores, and run under uvicorn."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from producer import Producer
from rehydrator.http import create_app
from rehydrator.http_keys import LOCAL_TENANT, ApiKeys
from rehydrator.http_models import ServiceOut
from stack import health
from stack.rehydration import open_rehydrator
from stack.settings import Settings


async def _services(settings: Settings) -> Mapping[str, ServiceOut]:
    # Up or down and how fast, nothing else: URLs and error texts name hosts and users,
    # and the route answers without a key.
    return {h.name: ServiceOut(ok=h.ok, ms=h.latency_ms) for h in await health.check_all(settings)}


def build_app(settings: Settings, keys: ApiKeys) -> FastAPI:
    redis_url = settings.require_redis()
    return create_app(
        keys=keys,
        open_producer=lambda: Producer.from_url(redis_url, settings.producer),
        open_rehydrator=lambda: open_rehydrator(settings),
        check_health=lambda: _services(settings),
        erase_wait_s=settings.erase_wait_s,
    )


def openapi_document() -> dict[str, Any]:
    """The published schema: independent of the environment, so ``docs/openapi.json`` is too."""
    defaults = Settings(redis_url="redis://unused")
    schema: dict[str, Any] = build_app(defaults, ApiKeys.for_bind({}, "127.0.0.1")).openapi()
    return schema


def write_openapi(path: Path) -> None:
    path.write_text(json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n")


def describe_mode(keys: ApiKeys, host: str, port: int) -> str:
    where = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    if keys.local:
        return (
            f"LOCAL MODE on {where}: no AMEM_API_KEYS, so every request is tenant "
            f"{LOCAL_TENANT!r} and needs no key (only loopback clients can connect)"
        )
    tenants = keys.tenants
    return f"serving on {where}: API keys for {len(tenants)} tenant{'s' * (len(tenants) != 1)}"


def app_from_env() -> FastAPI:
    """The app of one server process of ``serve --workers N`` (uvicorn calls it in each):
    everything from the environment the parent set up."""
    settings = Settings.from_env()
    return build_app(settings, ApiKeys.for_bind(settings.api_keys, settings.http_host))


def serve(
    settings: Settings,
    host: str,
    port: int,
    announce: Callable[[str], object] = print,
    *,
    workers: int = 1,
) -> None:
    """Run until SIGINT/SIGTERM; refuses a non-loopback ``host`` without keys.

    ``workers`` > 1 runs that many server processes on the one socket (uvicorn's own
    process manager), each with its own rehydrator: calls are CPU-bound, so one process
    uses about one core.
    """
    keys = ApiKeys.for_bind(settings.api_keys, host)
    logging.basicConfig(
        level=os.environ.get("AMEM_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    announce(describe_mode(keys, host, port) + (f", {workers} processes" if workers > 1 else ""))
    # proxy_headers off: nothing here decides on client addresses, and trusting a header
    # a client can set would only mislead the access log.
    options: dict[str, Any] = {"proxy_headers": False, "server_header": False}
    if workers == 1:
        uvicorn.run(build_app(settings, keys), host=host, port=port, **options)
        return
    # Each process builds its app from the environment: give it this one's choices.
    os.environ.update({"AMEM_HOME": str(settings.home), "AMEM_HTTP_HOST": host})
    uvicorn.run(
        "stack.serve:app_from_env", factory=True, workers=workers, host=host, port=port, **options
    )
