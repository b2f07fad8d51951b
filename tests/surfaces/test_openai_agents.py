"""The Agents SDK session on the real embedded stack: the protocol as the SDK uses it, every
kind of item it stores, retries, and a ``Runner`` run with the SDK's scripted model."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, cast

import pytest
from agents import Agent, RunConfig, Runner, function_tool
from agents.items import TResponseInputItem
from agents.memory import Session, SessionSettings
from agents.testing import ScriptedModel, assistant_message, function_call

from producer import AppendResult, LogUnavailableError
from schemas.errors import ValidationError
from schemas.events import Message
from surfaces.memory import Memory
from surfaces.openai_agents import AtomicMemorySession
from tests.conftest import REPO
from tests.surfaces.conftest import DEADLINE_MS
from tests.surfaces.snippets import code_blocks

BIG = "lorem ipsum " * 9_000  # ~105 KB: a tool output far over the metadata limit


def every_kind() -> list[dict[str, Any]]:
    """One item of each kind the SDK stores in a session (Responses API input items)."""
    text = {"type": "output_text", "text": "Sunny, 24 °C.", "annotations": [], "logprobs": []}
    return [
        {"role": "user", "content": "What's the weather in Lisbon?"},
        {"role": "developer", "content": "Answer in one line."},
        {"role": "system", "content": "You are a travel planner."},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "And this photo?"},
                {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
            ],
        },
        {
            "id": "rs_1",
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "The user wants the weather."}],
            "encrypted_content": "gAAAAB" + "x" * 200,
        },
        {
            "id": "fc_1",
            "call_id": "call_1",
            "type": "function_call",
            "name": "get_weather",
            "arguments": '{"city": "Lisbon"}',
            "status": "completed",
        },
        {"call_id": "call_1", "type": "function_call_output", "output": "Sunny, 24 °C."},
        {
            "call_id": "call_2",
            "type": "function_call_output",
            "output": [{"type": "input_text", "text": "two parts"}],
        },
        {"call_id": "call_3", "type": "function_call_output", "output": BIG},
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [text, {"type": "refusal", "refusal": "No photos, sorry."}],
        },
        {
            "id": "fs_1",
            "type": "file_search_call",
            "queries": ["lisbon weather"],
            "status": "completed",
            "results": [{"file_id": "f1", "filename": "w.txt", "score": 0.5, "text": "sun"}],
        },
        {
            "id": "ws_1",
            "type": "web_search_call",
            "status": "completed",
            "action": {"type": "search", "query": "lisbon weather"},
        },
        {
            "id": "cu_1",
            "call_id": "call_4",
            "type": "computer_call",
            "action": {"type": "click", "button": "left", "x": 10, "y": 20},
            "pending_safety_checks": [],
            "status": "completed",
        },
        {
            "call_id": "call_4",
            "type": "computer_call_output",
            "output": {"type": "computer_screenshot", "image_url": "data:image/png;base64,AAAA"},
        },
        {
            "id": "ig_1",
            "type": "image_generation_call",
            "status": "completed",
            "result": "iVBORw0KGgo" + "A" * 5000,
        },
        {
            "id": "ci_1",
            "type": "code_interpreter_call",
            "code": "print(6 * 7)",
            "container_id": "c1",
            "outputs": [{"type": "logs", "logs": "42"}],
            "status": "completed",
        },
        {
            "id": "ls_1",
            "call_id": "call_5",
            "type": "local_shell_call",
            "action": {"type": "exec", "command": ["ls", "-la"], "env": {}},
            "status": "completed",
        },
        {"id": "ls_1", "type": "local_shell_call_output", "output": "total 0"},
        {
            "call_id": "call_6",
            "type": "shell_call",
            "action": {"commands": ["date"], "timeout_ms": 1000},
            "status": "completed",
        },
        {
            "call_id": "call_6",
            "type": "shell_call_output",
            "output": [
                {"stdout": "Tue", "stderr": "", "outcome": {"type": "exit", "exit_code": 0}}
            ],
        },
        {
            "call_id": "call_7",
            "type": "apply_patch_call",
            "operation": {"type": "update_file", "path": "a.py", "diff": "@@ -1 +1 @@\n-a\n+b"},
            "status": "completed",
        },
        {"call_id": "call_7", "type": "apply_patch_call_output", "status": "completed"},
        {
            "id": "ml_1",
            "type": "mcp_list_tools",
            "server_label": "amem",
            "tools": [{"name": "recall", "input_schema": {"type": "object"}}],
        },
        {
            "id": "ma_1",
            "type": "mcp_approval_request",
            "server_label": "amem",
            "name": "forget",
            "arguments": '{"session_id": "s"}',
        },
        {"type": "mcp_approval_response", "approval_request_id": "ma_1", "approve": True},
        {
            "id": "mc_1",
            "type": "mcp_call",
            "server_label": "amem",
            "name": "recall",
            "arguments": '{"query": "weather"}',
            "output": "Sunny.",
        },
        {"call_id": "call_8", "type": "custom_tool_call", "name": "sql", "input": "SELECT 1"},
        {"call_id": "call_8", "type": "custom_tool_call_output", "output": "1"},
        {"id": "cmp_1", "type": "compaction", "encrypted_content": "opaque-summary"},
        {  # two texts over the metadata limit: the item is kept whole as the content
            "id": "rs_2",
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "s" * 20_000}],
            "encrypted_content": "e" * 20_000,
        },
        {"id": "msg_0", "type": "item_reference"},
        {"role": "user", "content": ""},
        {"role": "user", "content": 'Ünïcødé ✓ and emoji 🌍, quotes " and \\ backslash'},
    ]


def session_of(memory: Memory, **options: Any) -> AtomicMemorySession:
    return AtomicMemorySession(f"agents-{uuid.uuid4().hex[:12]}", memory=memory, **options)


def items(raw: Sequence[dict[str, Any]]) -> list[TResponseInputItem]:
    return cast(list[TResponseInputItem], list(raw))


def test_the_class_satisfies_the_sdks_session_protocol(memory: Memory) -> None:
    assert isinstance(session_of(memory), Session)


async def test_every_kind_of_item_round_trips_exactly_and_in_order(memory: Memory) -> None:
    session = session_of(memory)
    kinds = every_kind()
    await session.add_items(items(kinds[:10]))
    await session.add_items(items(kinds[10:]))
    assert await session.get_items() == kinds
    assert await session.get_items(limit=3) == kinds[-3:]
    assert await session.get_items(limit=1) == kinds[-1:]
    assert await session.get_items(limit=0) == []
    assert await session.get_items(limit=len(kinds) + 5) == kinds


async def test_session_settings_limit_applies_unless_a_limit_is_given(memory: Memory) -> None:
    session = session_of(memory, session_settings=SessionSettings(limit=2))
    turns = [{"role": "user", "content": f"turn {i}"} for i in range(5)]
    await session.add_items(items(turns))
    assert await session.get_items() == turns[-2:]
    assert await session.get_items(limit=4) == turns[-4:]


async def test_pop_item_removes_and_returns_the_latest_until_empty(memory: Memory) -> None:
    session = session_of(memory)
    kinds = every_kind()[4:8]  # reasoning, a call and two outputs
    await session.add_items(items(kinds))
    assert await session.pop_item() == kinds[-1]
    assert await session.get_items() == kinds[:-1]
    assert await session.pop_item() == kinds[-2]
    assert await session.get_items(limit=1) == [kinds[-3]]
    await session.add_items(items(kinds[-1:]))  # a popped item may be added again
    assert await session.get_items() == [*kinds[:-2], kinds[-1]]
    for _ in range(3):
        assert await session.pop_item() is not None
    assert await session.pop_item() is None
    assert await session.get_items() == []


async def test_clear_session_empties_it_and_it_starts_afresh(memory: Memory) -> None:
    session = session_of(memory)
    await session.add_items(items(every_kind()[:6]))
    await session.clear_session()
    assert await session.get_items() == []
    assert await session.pop_item() is None
    again = [{"role": "user", "content": "hello again"}]
    await session.add_items(items(again))
    assert await session.get_items() == again


async def test_repeated_items_are_kept_as_often_as_they_are_added(memory: Memory) -> None:
    session = session_of(memory)
    yes = {"role": "user", "content": "yes"}
    await session.add_items(items([yes]))
    await session.add_items(items([yes, yes]))
    assert await session.get_items() == [yes, yes, yes]


async def test_a_retried_add_items_appends_nothing_twice(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log took the append but the answer was lost: the caller's retry of the same
    call must not duplicate the items."""
    session = session_of(memory)
    remember = memory.remember
    failures = [LogUnavailableError("connection reset after the append")]

    async def applied_then_lost(messages: Sequence[Message]) -> list[AppendResult]:
        results = await remember(messages)
        if failures:
            raise failures.pop()
        return results

    monkeypatch.setattr(memory, "remember", applied_then_lost)
    turn = [{"role": "user", "content": "book it"}, {"role": "assistant", "content": "Booked."}]
    with pytest.raises(LogUnavailableError):
        await session.add_items(items(turn))
    await session.add_items(items(turn))
    assert await session.get_items() == turn


async def test_tenants_with_the_same_session_never_mix(memory: Memory) -> None:
    mine = session_of(memory, tenant_id="acme")
    theirs = AtomicMemorySession(mine.session_id, memory=memory, tenant_id="globex")
    await mine.add_items(items([{"role": "user", "content": "acme's secret"}]))
    assert await theirs.get_items() == []
    assert await theirs.pop_item() is None
    await theirs.clear_session()
    assert await mine.get_items() == [{"role": "user", "content": "acme's secret"}]


async def test_items_that_are_not_json_objects_are_refused_whole(memory: Memory) -> None:
    session = session_of(memory)
    bad = [{"role": "user", "content": "fine"}, "not an item"]
    with pytest.raises(ValidationError, match="item"):
        await session.add_items(cast(list[TResponseInputItem], bad))
    assert await session.get_items() == []


async def test_a_runner_uses_it_as_its_session_across_two_turns(memory: Memory) -> None:
    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"Sunny in {city}, 24 °C."

    model = ScriptedModel(
        [
            [function_call("get_weather", {"city": "Lisbon"}, call_id="call_1")],
            [assistant_message("It is sunny in Lisbon.", item_id="msg_1")],
            [assistant_message("You asked about Lisbon.", item_id="msg_2")],
        ]
    )
    agent = Agent(name="Planner", instructions="Plan trips.", model=model, tools=[get_weather])
    session = session_of(memory, user_id="ada")
    run: Callable[[str], Awaitable[Any]] = lambda text: Runner.run(  # noqa: E731
        agent, text, session=session, run_config=RunConfig(tracing_disabled=True)
    )

    first = await run("What's the weather in Lisbon?")
    assert first.final_output == "It is sunny in Lisbon."
    second = await run("What did I ask before?")
    assert second.final_output == "You asked about Lisbon."

    stored = cast(list[dict[str, Any]], await session.get_items())
    kinds = [item.get("type", "message") for item in stored]
    assert kinds == [
        "message",
        "function_call",
        "function_call_output",
        "message",
        "message",
        "message",
    ], stored
    assert stored[0] == {"content": "What's the weather in Lisbon?", "role": "user"}
    assert stored[2]["output"] == "Sunny in Lisbon, 24 °C."
    # The second turn's model call got the first turn back from the log, then the new input.
    last = model.last_call
    assert last is not None
    assert last.input == stored[:5]
    context = await session.recall("weather", budget_tokens=400)
    assert any("Sunny in Lisbon" in item.text for item in context.items)


async def test_an_item_over_the_content_limit_is_refused_whole(memory: Memory) -> None:
    session = session_of(memory)
    huge = {"id": "ig_2", "type": "image_generation_call", "result": "A" * 300_000}
    with pytest.raises(ValidationError, match=r"content.*limit"):
        await session.add_items(items([{"role": "user", "content": "draw"}, huge]))
    assert await session.get_items() == []


class ResponsesStandIn(BaseHTTPRequestHandler):
    """The OpenAI Responses API as far as a text answer goes: each request is recorded, and
    the answer names the turn it answers."""

    requests: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(body)
        text = f"Answer {len(self.requests)}."
        answer = {
            "id": f"resp_{len(self.requests)}",
            "object": "response",
            "created_at": 0,
            "model": body.get("model", "stand-in"),
            "status": "completed",
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "output": [
                {
                    "id": f"msg_{len(self.requests)}",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "usage": {
                "input_tokens": 1,
                "output_tokens": 1,
                "total_tokens": 2,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def responses_api() -> Iterator[str]:
    ResponsesStandIn.requests.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), ResponsesStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()


def said_to_the_model(request: dict[str, Any]) -> str:
    return json.dumps([request.get("instructions"), request.get("input")])


def test_the_guides_examples_run_as_written(stack_env: dict[str, str], responses_api: str) -> None:
    first, second = code_blocks("docs/openai-agents.md", "python")
    (readme,) = [b for b in code_blocks("README.md", "python") if "surfaces." in b]
    env = {
        **stack_env,
        "OPENAI_API_KEY": "sk-test-no-network",
        "OPENAI_BASE_URL": responses_api,
        "OPENAI_AGENTS_DISABLE_TRACING": "1",
        "AMEM_REHYDRATE_DEADLINE_MS": str(DEADLINE_MS),
    }
    for block in (first, second, readme):
        ran = subprocess.run(
            [sys.executable, "-c", block], env=env, cwd=REPO, capture_output=True, text=True
        )
        assert ran.returncode == 0, ran.stderr
    calls = ResponsesStandIn.requests
    assert len(calls) == 4
    # The second turn replays the first from the log; the long-session example replays
    # the last 10 items and recalls the rest into its instructions.
    assert "I want to visit Lisbon in May." in said_to_the_model(calls[1])
    assert "Lisbon" in str(calls[2]["instructions"])
    assert "Book a hotel for that month." in said_to_the_model(calls[2])
    assert "I'd like to see Lisbon in May." in said_to_the_model(calls[3])
