"""A :class:`~surfaces.memory.Memory` over the test stack, shared by the surfaces' tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stack.settings import Settings
from surfaces.memory import Memory


@pytest.fixture(scope="session")
async def memory(settings: Settings) -> AsyncIterator[Memory]:
    async with Memory.open(settings) as opened:
        yield opened
