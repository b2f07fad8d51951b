"""API keys of the HTTP API: which tenant a key speaks for, and when no key is needed.

Free of web-framework imports: :mod:`stack.settings` parses ``AMEM_API_KEYS`` with it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from schemas.errors import ConfigurationError, ValidationError
from schemas.validation import validate_id

LOCAL_TENANT = "default"
"""The tenant of every request in local mode (the CLI's and the importer's default too)."""
MIN_KEY_CHARS = 16
"""Shorter keys are refused at start-up: a key is the only thing between a tenant and the world."""
KEY_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]+")
"""RFC 6750's token68 alphabet: a key travels as-is in an ``Authorization: Bearer`` header."""


def parse_api_keys(raw: str) -> dict[str, str]:
    """``AMEM_API_KEYS`` (``key=tenant,key=tenant``) as key → tenant; empty text: no keys.

    Errors name the entry by its place, never the key itself: it is a secret.
    """
    keys: dict[str, str] = {}
    for n, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
        if not entry:
            continue
        # The last "=": base64 keys may end with "=" padding, tenant ids never contain one.
        key, sep, tenant = entry.rpartition("=")
        key, tenant = key.strip(), tenant.strip()
        where = f"AMEM_API_KEYS entry {n}"
        if not sep or not key:
            raise ConfigurationError(f"{where} is not key=tenant")
        if len(key) < MIN_KEY_CHARS or KEY_PATTERN.fullmatch(key) is None:
            raise ConfigurationError(
                f"{where}: a key must be at least {MIN_KEY_CHARS} characters of "
                "A-Z a-z 0-9 . _ ~ + / = - (e.g. `openssl rand -hex 32`)"
            )
        try:
            validate_id("tenant", tenant)
        except ValidationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        if key in keys:
            raise ConfigurationError(f"{where} repeats an earlier key")
        keys[key] = tenant
    return keys


def is_loopback(host: str) -> bool:
    """True only for addresses no other machine can reach; unknown host names are not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _digest(key: str) -> bytes:
    # Fixed-length digests: compare_digest then takes as long whatever the key's length.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True, slots=True)
class ApiKeys:
    """Key → tenant lookups in constant time, or local mode (every request is ``default``)."""

    _tenants: tuple[tuple[bytes, str], ...]
    local: bool

    @classmethod
    def for_bind(cls, keys: Mapping[str, str], host: str) -> ApiKeys:
        """The keys a server bound to ``host`` uses.

        No keys is local mode, and only on a loopback address: a server others can reach
        without keys would hand every tenant's memory to anyone who asks.
        """
        if not keys and not is_loopback(host):
            raise ConfigurationError(
                f"refusing to serve on {host} without API keys: set AMEM_API_KEYS=key=tenant,... "
                "(local mode, without keys, binds to a loopback address only)"
            )
        return cls(tuple((_digest(k), t) for k, t in keys.items()), local=not keys)

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(t for _, t in self._tenants)

    def tenant_for(self, key: str | None) -> str | None:
        """The key's tenant, ``None`` for no key or an unknown one (always ``default`` locally)."""
        if self.local:
            return LOCAL_TENANT
        if not key:
            return None
        presented = _digest(key)
        found: str | None = None
        for digest, tenant in self._tenants:  # every entry, so the time says nothing of a match
            if hmac.compare_digest(digest, presented):
                found = tenant
        return found
