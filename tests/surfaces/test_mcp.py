"""``amem mcp`` against the real stack, through the MCP SDK's own client, over stdio and
streamable HTTP: the tools end to end, tenants by API key, one-line tool errors."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

from rehydrator.http_keys import ApiKeys
from surfaces.mcp_server import KeyGate
from tests.conftest import REPO
from tests.integration.test_cli import amem
from tests.integration.test_http import free_port
from tests.surfaces.snippets import code_blocks

AMEM = [sys.executable, "-m", "stack.cli"]
TOOLS = {"remember", "recall", "read_session", "list_sessions", "forget"}
STDIO_TENANT = "mcp-stdio"
KEY_A = "mcp-key-tenant-a-0123456789abcdef"
KEY_B = "mcp-key-tenant-b-0123456789abcdef"
TENANT_A, TENANT_B = "mcp-tenant-a", "mcp-tenant-b"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def env(stack_env: dict[str, str]) -> dict[str, str]:
    # Time to spare for each tier: these tests are about what is found, not how fast.
    return {**stack_env, "HF_HUB_OFFLINE": "1", "AMEM_REHYDRATE_DEADLINE_MS": "10000"}


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TextIO]:
    """Where the stdio servers' stderr goes (the client's errlog needs a real file)."""
    with (tmp_path_factory.mktemp("mcp") / "stderr.log").open("w+") as log:
        yield log


@asynccontextmanager
async def held(opened: AbstractAsyncContextManager[Client]) -> AsyncIterator[Client]:
    # The SDK's task groups must be entered and left in one task; pytest-asyncio sets a
    # fixture up and tears it down in two. A task of its own holds the client open.
    ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def hold() -> None:
        try:
            async with opened as client:
                ready.set_result(client)
                await done.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    holder = asyncio.create_task(hold())
    try:
        yield await ready
    finally:
        done.set()
        await holder


def stdio(env: dict[str, str], errlog: TextIO, command: str, *args: str) -> Client:
    params = StdioServerParameters(command=command, args=list(args), env=env, cwd=REPO)
    return Client(stdio_client(params, errlog=errlog), read_timeout_seconds=60)


@asynccontextmanager
async def http(url: str, headers: dict[str, str]) -> AsyncIterator[Client]:
    # A client given to the transport is the caller's to close.
    timeout = httpx2.Timeout(30, read=120)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http_client:
        transport = streamable_http_client(url, http_client=http_client)
        async with Client(transport, read_timeout_seconds=60) as client:
            yield client


@pytest.fixture(scope="module")
def http_server(env: dict[str, str]) -> Iterator[str]:
    """One ``amem mcp --transport http`` for the module, with keys of two tenants."""
    port = free_port()
    keys = {**env, "AMEM_API_KEYS": f"{KEY_A}={TENANT_A},{KEY_B}={TENANT_B}"}
    process = subprocess.Popen(
        [*AMEM, "mcp", "--transport", "http", "--port", str(port)],
        env=keys,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        _wait_until_answering(process, url)
        yield url
    finally:
        process.terminate()
        _, said = process.communicate(timeout=30)
        assert "API keys for 2 tenants" in said


def _wait_until_answering(process: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            assert process.stderr is not None
            pytest.fail(f"amem mcp exited: {process.stderr.read()}")
        try:
            httpx.get(url, timeout=2)  # any answer: the lifespan (the memory) is open
            return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "amem mcp did not answer in 90 s"
        time.sleep(0.2)


@pytest.fixture(scope="module", params=["stdio", "http"])
async def client(
    request: pytest.FixtureRequest, env: dict[str, str], server_log: TextIO
) -> AsyncIterator[Client]:
    """One server process per transport: stdio as tenant STDIO_TENANT, http with KEY_A."""
    opened: AbstractAsyncContextManager[Client]
    if request.param == "stdio":
        opened = stdio(
            env, server_log, sys.executable, "-m", "stack.cli", "mcp", "--tenant", STDIO_TENANT
        )
    else:
        opened = http(request.getfixturevalue("http_server"), {"Authorization": f"Bearer {KEY_A}"})
    async with held(opened) as connected:
        yield connected


def new_session() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


def answer(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def error_line(result: CallToolResult) -> str:
    assert result.is_error
    (block,) = result.content
    assert isinstance(block, TextContent)
    assert "\n" not in block.text
    assert "Traceback" not in block.text
    return block.text


async def contents(client: Client, session: str) -> list[str]:
    read = answer(await client.call_tool("read_session", {"session_id": session}))
    return [m["content"] for m in read["messages"]]


async def test_lists_the_five_tools_with_descriptions_and_schemas(client: Client) -> None:
    tools = (await client.list_tools()).tools
    assert {t.name for t in tools} == TOOLS
    for tool in tools:
        assert len(tool.description or "") > 40, tool.name
        assert tool.input_schema["type"] == "object"
    remember = next(t for t in tools if t.name == "remember")
    assert remember.input_schema["required"] == ["session_id", "messages"]


async def test_remember_read_recall_list_and_forget(client: Client) -> None:
    session = new_session()
    said = [
        {"id": "m1", "role": "user", "content": "My sister Ada lives in Lisbon.", "name": "jo"},
        {"id": "m2", "role": "assistant", "content": "Noted: Ada, Lisbon."},
    ]
    args = {"session_id": session, "messages": said}
    stored = answer(await client.call_tool("remember", args))["messages"]
    assert [(m["id"], m["duplicate"]) for m in stored] == [("m1", False), ("m2", False)]
    again = answer(await client.call_tool("remember", args))["messages"]
    assert [m["duplicate"] for m in again] == [True, True]
    assert [m["position"] for m in again] == [m["position"] for m in stored]

    assert await contents(client, session) == [m["content"] for m in said]

    recall = {"session_id": session, "query": "Where does Ada live?"}
    recalled = answer(await client.call_tool("recall", recall))
    assert "jo: My sister Ada lives in Lisbon." in recalled["text"]
    items = {i["id"]: i for i in recalled["items"]}
    assert set(items) == {"m1", "m2"}
    assert all(i["found_by"] for i in items.values())

    listed = answer(await client.call_tool("list_sessions", {}))["sessions"]
    (summary,) = [s for s in listed if s["session_id"] == session]
    assert summary["message_count"] == 2
    assert set(summary) >= {"participants", "first_at", "last_at"}

    redact = {"session_id": session, "message_id": "m1"}
    redacted = answer(await client.call_tool("forget", redact))
    assert redacted["erased"][0]["message_id"] == "m1"
    assert await contents(client, session) == ["Noted: Ada, Lisbon."]

    answer(await client.call_tool("forget", {"session_id": session, "reason": "asked to"}))
    assert await contents(client, session) == []


async def test_an_unknown_session_is_empty(client: Client) -> None:
    session = new_session()
    assert await contents(client, session) == []
    recalled = answer(await client.call_tool("recall", {"session_id": session}))
    assert (recalled["items"], recalled["text"]) == ([], "")


@pytest.mark.parametrize(
    ("tool", "arguments", "reason"),
    [
        ("read_session", {"session_id": "a b"}, "read_session: session_id: must be 1-128"),
        (
            "remember",
            {"session_id": "s", "messages": [{"role": "robot", "content": "beep"}]},
            "remember: messages.0.role: Input should be 'assistant', 'system', 'tool' or 'user'",
        ),
        (
            "recall",
            {"session_id": "s", "budget_tokens": 0},
            "recall: budget_tokens: Input should be greater than or equal to 1",
        ),
        (
            "remember",
            {"session_id": "s", "messages": [{"role": "user", "content": "a\x00b"}]},
            "remember: content: contains a NUL character",
        ),
        (
            "remember",
            {"session_id": "s", "messages": [{"role": "user", "content": "x", "tenant_id": "t"}]},
            "remember: messages.0.tenant_id: Extra inputs are not permitted",
        ),
    ],
    ids=["space-in-id", "bad-role", "zero-budget", "nul-in-content", "tenant-in-message"],
)
async def test_bad_arguments_are_one_line_tool_errors(
    client: Client, tool: str, arguments: dict[str, Any], reason: str
) -> None:
    line = error_line(await client.call_tool(tool, arguments))
    assert line.startswith(reason), line
    assert await contents(client, new_session()) == []  # still serving


async def test_the_tenant_is_the_api_keys(http_server: str) -> None:
    session = new_session()
    async with held(http(http_server, {"X-API-Key": KEY_A})) as a:
        message = {"role": "user", "content": "A's secret"}
        answer(await a.call_tool("remember", {"session_id": session, "messages": [message]}))
        assert await contents(a, session) == ["A's secret"]
    async with held(http(http_server, {"Authorization": f"Bearer {KEY_B}"})) as b:
        assert await contents(b, session) == []
        listed = answer(await b.call_tool("list_sessions", {}))["sessions"]
        assert session not in {s["session_id"] for s in listed}
        recalled = answer(await b.call_tool("recall", {"session_id": session}))
        assert recalled["items"] == []


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({}, "no API key"),
        ({"Authorization": f"Bearer {KEY_A}x"}, "unknown API key"),
        ({"X-API-Key": "not-a-key-of-anyone-at-all"}, "unknown API key"),
        (
            {"Authorization": f"Bearer {KEY_A}", "X-API-Key": KEY_B},
            "Authorization and X-API-Key name different keys",
        ),
    ],
    ids=["no-key", "wrong-bearer", "wrong-x-api-key", "two-keys"],
)
def test_a_request_without_a_valid_key_is_refused(
    http_server: str, headers: dict[str, str], problem: str
) -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    response = httpx.post(http_server, json=call, headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"].startswith(problem)


async def test_local_mode_lets_every_request_through() -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    local = KeyGate(inner, ApiKeys.for_bind({}, "127.0.0.1"))
    transport = httpx.ASGITransport(app=local)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        assert (await client.post("/mcp")).status_code == 204


def test_stdout_carries_the_protocol_and_nothing_else(env: dict[str, str]) -> None:
    said = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "1"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    server = subprocess.Popen(
        [*AMEM, "mcp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert server.stdin is not None
    assert server.stdout is not None
    try:
        server.stdin.write("".join(json.dumps(m) + "\n" for m in said))
        server.stdin.flush()
        # Every line until both answers must be JSON-RPC; stdin stays open till then (the
        # server stops reading, and may drop a request in hand, once it closes).
        answers = [json.loads(server.stdout.readline()) for _ in range(2)]
    finally:
        rest, stderr = server.communicate(timeout=60)  # closes stdin: the server exits
    assert [a.get("id") for a in answers] == [1, 2], stderr
    assert rest == "", rest  # nothing else on stdout either, up to the exit
    assert {t["name"] for t in answers[1]["result"]["tools"]} == TOOLS
    assert "MCP over stdio: every call is tenant 'default'" in stderr


def test_refuses_a_public_bind_without_keys(env: dict[str, str]) -> None:
    result = amem(env, "mcp", "--transport", "http", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().startswith("error: refusing to serve on 0.0.0.0 without API keys")
    assert "\n" not in result.stderr.strip()


def test_without_the_extra_it_says_how_to_install_it(env: dict[str, str]) -> None:
    # The core install has no `mcp`: hide the installed one from the command.
    hide = "import sys; sys.modules['mcp'] = None; from stack.cli import app; app()"
    result = subprocess.run(
        [sys.executable, "-c", hide, "mcp"], env=env, capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 2
    expected = "error: amem mcp needs the mcp extra: pip install 'atomic-memory[mcp]'"
    assert result.stderr.strip() == expected


async def test_the_documented_client_configuration_starts_a_server(
    env: dict[str, str], tmp_path: Path
) -> None:
    for block in [*code_blocks("docs/mcp.md", "json"), *code_blocks("README.md", "json")]:
        await launched_as_written(json.loads(block), env, tmp_path)


async def launched_as_written(config_block: Any, env: dict[str, str], tmp_path: Path) -> None:
    servers = config_block["mcpServers"]
    assert list(servers) == ["atomic-memory"]
    config = servers["atomic-memory"]
    assert config["env"] == {"AMEM_HOME": "/path/to/.amem"}
    path = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    command = shutil.which(config["command"], path=path)
    assert command is not None
    launched = {**env, "PATH": path, **config["env"], "AMEM_HOME": env["AMEM_HOME"]}
    with (tmp_path / "stderr.log").open("w+") as log:
        try:
            async with held(stdio(launched, log, command, *config["args"])) as client:
                assert {t.name for t in (await client.list_tools()).tools} == TOOLS
                assert await contents(client, new_session()) == []
        except Exception:
            log.seek(0)
            pytest.fail(f"{command} {' '.join(config['args'])} failed: {log.read()[-2000:]}")
