"""The LangChain chat message history on the real embedded stack."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
    add_notification_metadata,
)
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory

from schemas.errors import ConfigurationError, ValidationError
from schemas.events import Message
from stack.settings import Settings
from surfaces.langchain import AtomicMemoryChatMessageHistory
from surfaces.memory import ErasePendingError, Memory
from surfaces.originals import ORIGINAL
from tests.conftest import REPO
from tests.surfaces.snippets import code_blocks

DOC = "docs/langchain.md"
# LangChain deprecated RunnableWithMessageHistory (for LangGraph's persistence) but keeps it
# until 2.0: it is still the API that takes a BaseChatMessageHistory.
RUNNABLE_DEPRECATED = pytest.mark.filterwarnings(
    "ignore:RunnableWithMessageHistory is deprecated:DeprecationWarning"
)


def _session() -> str:
    return f"lc-{uuid.uuid4().hex}"


def _every_kind() -> list[BaseMessage]:
    """One of each message type, with every field LangChain gives it."""
    return [
        SystemMessage("You answer about the weather.", id="sys-1"),
        HumanMessage("What's the weather in Paris?", id="h-1", name="ada"),
        HumanMessage(
            content=[
                {"type": "text", "text": "And this picture?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/sky.png"}},
            ]
        ),
        AIMessage(
            content=[{"type": "text", "text": "Let me look it up."}],
            tool_calls=[
                {"name": "weather", "args": {"city": "Paris"}, "id": "call-1", "type": "tool_call"}
            ],
            invalid_tool_calls=[
                {
                    "name": "forecast",
                    "args": '{"days": ',
                    "id": "call-2",
                    "error": "truncated JSON",
                    "type": "invalid_tool_call",
                }
            ],
            usage_metadata={
                "input_tokens": 31,
                "output_tokens": 12,
                "total_tokens": 43,
                "input_token_details": {"cache_read": 8},
            },
            response_metadata={"model_name": "stub-1", "finish_reason": "tool_calls"},
            additional_kwargs={"refusal": None},
            id="run-1",
            name="forecaster",
        ),
        ToolMessage(
            "sunny, 24 C; " * 8000,  # ~100 KB of tool output
            tool_call_id="call-1",
            name="weather",
            artifact={"rows": [{"hour": h, "temp": 20 + h % 5} for h in range(24)]},
            status="success",
        ),
        ToolMessage("forecast failed", tool_call_id="call-2", status="error"),
        FunctionMessage(content='{"temp": 24}', name="legacy_weather"),
        ChatMessage(content="Too vague.", role="critic"),
        ChatMessage(content="Noted.", role="assistant", name="editor"),
        AIMessageChunk(
            content="It is sunny",
            tool_call_chunks=[{"name": "weather", "args": '{"city":', "id": "call-3", "index": 0}],
        ),
        # Past the metadata limit even without its text: kept whole as the content.
        HumanMessage(
            "with attachments",
            additional_kwargs={
                "attachments": [{"name": f"file-{i}.txt", "size": i} for i in range(1500)],
                "note": "x" * 20_000,
            },
        ),
        add_notification_metadata(
            HumanMessage("Background task t_42 finished."),
            source="async_subagent",
            data={"task": "t_42"},
        ),
    ]


EXPECTED_ROLES = [
    "system",
    "user",
    "user",
    "assistant",
    "tool",
    "tool",
    "tool",
    "user",
    "assistant",
    "assistant",
    "user",
    "user",
]


async def test_every_message_type_round_trips_async(memory: Memory) -> None:
    history = AtomicMemoryChatMessageHistory(
        session_id=_session(), memory=memory, tenant_id="lc-test", user_id="ada"
    )
    sent = _every_kind()
    await history.aadd_messages(sent)

    back = await history.aget_messages()
    assert back == sent
    assert [type(m) for m in back] == [type(m) for m in sent]

    stored = [s.message for s in await memory.read("lc-test", history.session_id)]
    assert [m.role for m in stored] == EXPECTED_ROLES
    assert {m.user_id for m in stored} == {"ada"}
    assert len({m.id for m in stored}) == len(sent)
    # The text the projections index is the message's own, not a serialisation of it.
    assert stored[4].content == sent[4].content
    assert stored[1].name == "ada"
    assert stored[7].name == "critic"
    assert stored[10].metadata[ORIGINAL] == {"kind": "langchain", "whole": True}


async def test_every_message_type_round_trips_sync(memory: Memory) -> None:
    history = AtomicMemoryChatMessageHistory(
        session_id=_session(), memory=memory, tenant_id="lc-test"
    )
    sent = _every_kind()
    # The sync methods from a thread without a loop, as a sync program calls them.
    await asyncio.to_thread(history.add_messages, sent[:5])
    await asyncio.to_thread(history.add_messages, sent[5:])
    back = await asyncio.to_thread(lambda: history.messages)
    assert back == sent
    assert [type(m) for m in back] == [type(m) for m in sent]


async def test_sync_method_on_the_memory_loop_is_refused(memory: Memory) -> None:
    history = AtomicMemoryChatMessageHistory(session_id=_session(), memory=memory)
    with pytest.raises(ConfigurationError, match="async variant"):
        history.add_messages([HumanMessage("hi")])
    assert await history.aget_messages() == []


async def test_messages_of_other_surfaces_read_as_plain_types(memory: Memory) -> None:
    session = _session()
    plain = [
        Message(tenant_id="lc-test", session_id=session, id="m-1", role="user", content="hi"),
        Message(
            tenant_id="lc-test",
            session_id=session,
            id="m-2",
            role="assistant",
            content="hello",
            name="bot",
        ),
        Message(tenant_id="lc-test", session_id=session, id="m-3", role="system", content="s"),
        Message(
            tenant_id="lc-test",
            session_id=session,
            id="m-4",
            role="tool",
            content="42",
            metadata={"tool_call_id": "call-9"},
        ),
    ]
    await memory.remember(plain)
    history = AtomicMemoryChatMessageHistory(session_id=session, memory=memory, tenant_id="lc-test")
    assert await history.aget_messages() == [
        HumanMessage("hi", id="m-1"),
        AIMessage("hello", id="m-2", name="bot"),
        SystemMessage("s", id="m-3"),
        ToolMessage("42", id="m-4", tool_call_id="call-9"),
    ]


@pytest.mark.parametrize(
    "bad",
    [RemoveMessage(id="x"), HumanMessage("y" * (300 * 1024))],
    ids=["remove-message", "content-too-large"],
)
async def test_add_messages_is_all_or_nothing(memory: Memory, bad: BaseMessage) -> None:
    history = AtomicMemoryChatMessageHistory(session_id=_session(), memory=memory)
    with pytest.raises(ValidationError):
        await history.aadd_messages([HumanMessage("fine"), bad])
    assert await history.aget_messages() == []


async def test_clear_empties_the_history(memory: Memory) -> None:
    history = AtomicMemoryChatMessageHistory(session_id=_session(), memory=memory)
    await history.aadd_messages([HumanMessage("remember me"), AIMessage("I will")])
    await history.aclear()
    assert await history.aget_messages() == []

    # The session starts afresh: new messages after the erase are kept.
    await history.aadd_messages([HumanMessage("again")])
    assert await history.aget_messages() == [HumanMessage("again")]

    await asyncio.to_thread(history.clear)
    assert await asyncio.to_thread(lambda: history.messages) == []


async def test_clear_with_erase_wait_raises_what_is_left(memory: Memory) -> None:
    # The test stack runs no workers: nothing applies the erase, so the wait runs out (the
    # purge itself is proven in tests/integration/test_erase.py).
    history = AtomicMemoryChatMessageHistory(session_id=_session(), memory=memory, erase_wait_s=0.5)
    await history.aadd_messages([HumanMessage("remember me")])
    with pytest.raises(ErasePendingError) as pending:
        await history.aclear()
    assert pending.value.report.left
    assert await history.aget_messages() == []  # hidden at once all the same


async def test_tenants_are_isolated(memory: Memory) -> None:
    session = _session()
    tenant_a, tenant_b = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    a = AtomicMemoryChatMessageHistory(session_id=session, memory=memory, tenant_id=tenant_a)
    b = AtomicMemoryChatMessageHistory(session_id=session, memory=memory, tenant_id=tenant_b)
    await a.aadd_messages([HumanMessage("a's secret")])
    await b.aadd_messages([HumanMessage("b's secret")])
    assert await a.aget_messages() == [HumanMessage("a's secret")]
    assert await b.aget_messages() == [HumanMessage("b's secret")]

    await a.aclear()
    assert await a.aget_messages() == []
    assert await b.aget_messages() == [HumanMessage("b's secret")]


def _chat(
    get_history: Callable[[str], AtomicMemoryChatMessageHistory],
) -> tuple[RunnableWithMessageHistory, list[list[BaseMessage]]]:
    """A chat over a stub model, and the model's input at each turn."""
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You answer about the weather."),
            MessagesPlaceholder("history"),
            ("human", "{question}"),
        ]
    )
    seen: list[list[BaseMessage]] = []

    def record(value: PromptValue) -> PromptValue:
        seen.append(value.to_messages())
        return value

    model = FakeListChatModel(responses=["Sunny in Paris.", "Still sunny."])
    chat = RunnableWithMessageHistory(
        prompt | RunnableLambda(record) | model,
        get_history,
        input_messages_key="question",
        history_messages_key="history",
    )
    return chat, seen


def _assert_two_turns(seen: list[list[BaseMessage]], history: list[BaseMessage]) -> None:
    assert [type(m) for m in history] == [HumanMessage, AIMessage, HumanMessage, AIMessage]
    assert [m.content for m in history] == [
        "Weather in Paris?",
        "Sunny in Paris.",
        "And tomorrow?",
        "Still sunny.",
    ]
    assert len(seen) == 2
    assert seen[0] == [SystemMessage("You answer about the weather."), history[0]]
    # The second turn's model input holds the first turn, as stored.
    assert seen[1] == [SystemMessage("You answer about the weather."), *history[:3]]


@RUNNABLE_DEPRECATED
async def test_runnable_with_message_history_ainvoke(memory: Memory) -> None:
    session = _session()
    chat, seen = _chat(
        lambda session_id: AtomicMemoryChatMessageHistory(session_id=session_id, memory=memory)
    )
    config: RunnableConfig = {"configurable": {"session_id": session}}
    assert (await chat.ainvoke({"question": "Weather in Paris?"}, config)).content == (
        "Sunny in Paris."
    )
    await chat.ainvoke({"question": "And tomorrow?"}, config)

    history = AtomicMemoryChatMessageHistory(session_id=session, memory=memory)
    _assert_two_turns(seen, await history.aget_messages())


@RUNNABLE_DEPRECATED
def test_runnable_with_message_history_invoke(settings: Settings) -> None:
    # A sync program: the memory on a loop of its own (the pytest loop is not running here,
    # but a sync invoke must not need one).
    session = _session()
    with Memory.in_thread(settings) as memory:
        chat, seen = _chat(
            lambda session_id: AtomicMemoryChatMessageHistory(session_id=session_id, memory=memory)
        )
        config: RunnableConfig = {"configurable": {"session_id": session}}
        assert chat.invoke({"question": "Weather in Paris?"}, config).content == "Sunny in Paris."
        chat.invoke({"question": "And tomorrow?"}, config)

        history = AtomicMemoryChatMessageHistory(session_id=session, memory=memory)
        _assert_two_turns(seen, history.messages)


@pytest.mark.parametrize("block", code_blocks(DOC, "python"))
def test_doc_snippets_run(block: str, stack_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", block],
        env=stack_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
