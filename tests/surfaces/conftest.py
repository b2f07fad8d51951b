"""A :class:`~surfaces.memory.Memory` over the test stack, shared by the surfaces' tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from stack.settings import Settings
from surfaces.memory import Memory

DEADLINE_MS = 10_000
"""These tests are about what is found, not how fast: a loaded CI machine must not make a
tier miss the default 80 ms."""


@pytest.fixture(scope="session")
async def memory(settings: Settings) -> AsyncIterator[Memory]:
    patient = replace(settings, rehydrate=replace(settings.rehydrate, deadline_ms=DEADLINE_MS))
    async with Memory.open(patient) as opened:
        yield opened
