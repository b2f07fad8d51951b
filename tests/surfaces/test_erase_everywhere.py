"""What a surface clears is left nowhere: the Agents SDK session's ``clear_session`` and
``pop_item``, the LangChain history's ``clear`` and the MCP server's ``forget``, with real
workers, then every store, key and file of the stack scanned for the secret, and
``amem verify`` over what is left."""

from __future__ import annotations

import asyncio
import secrets
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from agents.items import TResponseInputItem
from langchain_core.messages import AIMessage, HumanMessage

from stack.settings import Settings
from surfaces.langchain import AtomicMemoryChatMessageHistory
from surfaces.memory import Memory
from surfaces.openai_agents import AtomicMemorySession
from tests.integration.test_erase import clean_after_stop, fresh, run_ok
from tests.surfaces.test_mcp import answer, stdio

__all__ = ["fresh"]  # the fixture, imported to be used here

TENANT = "acme"
WAIT_S = 240
"""Each clear waits for its purge: the workers were just started."""


def items(*raw: dict[str, Any]) -> list[TResponseInputItem]:
    return cast(list[TResponseInputItem], list(raw))


async def remember_and_clear(settings: Settings, secret: str) -> None:
    async with Memory.open(settings) as memory:
        agents = AtomicMemorySession("agents", memory=memory, tenant_id=TENANT, erase_wait_s=WAIT_S)
        await agents.add_items(
            items(
                {"role": "user", "content": f"My passport number is {secret}."},
                {
                    "type": "function_call",
                    "call_id": "c1",
                    "name": "save",
                    "arguments": f'{{"passport": "{secret}"}}',
                },
                {"type": "function_call_output", "call_id": "c1", "output": "saved"},
            )
        )
        history = AtomicMemoryChatMessageHistory(
            session_id="langchain", memory=memory, tenant_id=TENANT, erase_wait_s=WAIT_S
        )
        await history.aadd_messages(
            [
                HumanMessage(f"The door code is {secret}."),
                AIMessage(
                    "Noted.", tool_calls=[{"name": "save", "args": {"code": secret}, "id": "t1"}]
                ),
            ]
        )
        kept = AtomicMemorySession("kept", memory=memory, tenant_id=TENANT, erase_wait_s=WAIT_S)
        await kept.add_items(
            items(
                {"role": "user", "content": "Plan a trip to Kyoto."},
                {"role": "user", "content": f"Oops, that was my PIN: {secret}"},
            )
        )

        popped = cast(dict[str, Any], await kept.pop_item())
        assert popped["content"].endswith(secret)
        await agents.clear_session()
        await history.aclear()
        assert await agents.get_items() == []
        assert await history.aget_messages() == []
        assert await kept.get_items() == [{"role": "user", "content": "Plan a trip to Kyoto."}]


async def remember_and_forget_over_mcp(env: dict[str, str], log: Path, secret: str) -> None:
    with log.open("w") as errlog:
        server = stdio(env, errlog, sys.executable, "-m", "stack.cli", "mcp", "--tenant", TENANT)
        async with server as client:
            message = {"role": "user", "content": f"My card PIN is {secret}."}
            remember = {"session_id": "mcp", "messages": [message]}
            answer(await client.call_tool("remember", remember))
            forgot = answer(await client.call_tool("forget", {"session_id": "mcp", "wait": True}))
            assert forgot["done"], forgot


@pytest.mark.timeout(600)
def test_what_each_surface_clears_is_left_nowhere(fresh: dict[str, str], tmp_path: Path) -> None:
    env = {**fresh, "AMEM_ERASE_WAIT_S": str(WAIT_S)}
    secret = f"SECRET-{secrets.token_hex(8)}"
    run_ok(env, "project", "start")
    asyncio.run(remember_and_clear(Settings.from_env(env), secret))
    asyncio.run(remember_and_forget_over_mcp(env, tmp_path / "mcp.log", secret))
    run_ok(env, "project", "wait", "--timeout", "300")
    clean_after_stop(env, secret)  # every key, table, collection, point and file scanned
    report = run_ok(env, "verify", "--tenant", TENANT, "--erased")
    assert report["ok"], report
    assert report["erased"] == {"sessions": 3, "messages": 1, "residue": {}}, report
    for projection in report["projections"]:
        # Only the kept session is left, with its one message, in every tier.
        assert (projection["sessions"], projection["messages"]) == (1, 1), projection
