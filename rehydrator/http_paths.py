"""Ids with a "/" in a URL path: sent as ``%2F``, routed as one segment, handed over decoded.

Ids may contain "/" (``user/42``). Servers decode ``%2F`` before routing, so a route
matching any text would read ``DELETE /v1/sessions/s1/messages`` as erasing a session
named ``s1/messages`` (202) rather than refusing a method the messages route does not
have (405). Routing on the path with ``%2F`` still encoded keeps an id to one segment,
which is also how OpenAPI clients send a path parameter: reserved characters encoded.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from starlette.convertors import Convertor, register_url_convertor
from starlette.types import ASGIApp, Receive, Scope, Send

CONVERTOR = "id"
"""Use as ``{session_id:id}`` in a route path."""
_ENCODED_SLASH = re.compile("%2F", re.IGNORECASE)


class _IdConvertor(Convertor[str]):
    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return _ENCODED_SLASH.sub("/", value)

    def to_string(self, value: str) -> str:
        return value.replace("/", "%2F")


register_url_convertor(CONVERTOR, _IdConvertor())


class EncodedSlashes:
    """Routes on the request path decoded except for ``%2F``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw:
            text = raw.split(b"?", 1)[0].decode("latin-1")
            # Only where the server's own decoding is this one (no prefix rewritten by a
            # proxy): otherwise the path is left as the server gave it.
            if "%" in text and unquote(text) == scope["path"]:
                parts = _ENCODED_SLASH.split(text)
                scope = {**scope, "path": "%2F".join(unquote(p) for p in parts)}
        await self.app(scope, receive, send)
