"""A LangChain chat message history on the log: ``RunnableWithMessageHistory``'s memory.

Each LangChain message is one message of the session: its text readable by the projections
(what recall ranks and packs) and the message itself kept whole (:mod:`surfaces.originals`),
so reading the history gives back objects equal to those added: every message type, tool
calls, usage, response metadata, content blocks. Guide: ``docs/langchain.md``.

Needs the ``langchain`` extra: ``pip install 'atomic-memory[langchain]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
    messages_from_dict,
)

from projectors.store import StoredMessage
from rehydrator.http_keys import LOCAL_TENANT
from schemas.errors import ValidationError
from schemas.events import ROLES, Message
from schemas.validation import validate_name
from surfaces.memory import Memory
from surfaces.originals import pack, unpack

KIND = "langchain"
"""What :func:`surfaces.originals.pack` records as the kind of the messages kept here."""


def _role(message: BaseMessage) -> str:
    # isinstance, not ``message.type``: the chunk classes (``AIMessageChunk`` …) subclass
    # their message class and have a type of their own.
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, ToolMessage | FunctionMessage):
        return "tool"
    if isinstance(message, ChatMessage):
        return message.role if message.role in ROLES else "user"
    # RemoveMessage (LangGraph's instruction to delete one) and classes messages_from_dict
    # cannot rebuild would be stored but never read back.
    raise ValidationError(
        "message",
        f"is a {type(message).__name__} ({message.type!r})",
        "human, ai, system, tool, function and chat messages and their chunks",
    )


def _speaker(message: BaseMessage) -> str | None:
    """The name a context shows beside the message's text."""
    name = message.name
    if not name and isinstance(message, ChatMessage) and message.role not in ROLES:
        # A role of the caller's own ("critic") is stored as a user turn: the name keeps
        # who spoke visible in a rehydrated context.
        name = message.role
    if not name:
        return None
    try:
        return validate_name(name)
    except ValidationError:
        return None  # too long for the column; the original keeps it whole anyway


def _plain(message: Message) -> BaseMessage:
    """A message some other surface appended, as the plain LangChain type of its role."""
    text, name, ident = message.content, message.name, message.id
    if message.role == "assistant":
        return AIMessage(content=text, name=name, id=ident)
    if message.role == "system":
        return SystemMessage(content=text, name=name, id=ident)
    if message.role == "tool":
        # LangChain requires a call id; the message's own id is the one stable name it has.
        call = message.metadata.get("tool_call_id")
        return ToolMessage(
            content=text, name=name, id=ident, tool_call_id=call if isinstance(call, str) else ident
        )
    return HumanMessage(content=text, name=name, id=ident)


class AtomicMemoryChatMessageHistory(BaseChatMessageHistory):
    """LangChain's ``BaseChatMessageHistory`` on one session of the log.

    ``add_messages`` (``aadd_messages``) appends a call's messages in one all-or-nothing
    append, stamped with ``user_id`` (the person the memory is about); retrying a call that
    raised, with the same messages through the same Memory, appends nothing twice.
    ``messages`` (``aget_messages``) reads the whole session in log order, messages not
    projected yet included, each equal to the one added; messages other surfaces appended
    come back as the plain type of their role. ``clear`` (``aclear``) erases the session:
    reads hide it at once and the projectors delete it from every store; with
    ``erase_wait_s`` it waits that long for the purge and raises
    :class:`~surfaces.memory.ErasePendingError` if something is left.

    The synchronous methods run on the memory's loop (:meth:`Memory.blocking`): from a
    synchronous program open the memory with :meth:`Memory.in_thread`; on the loop the
    memory was opened on, use the async methods.
    """

    def __init__(
        self,
        *,
        session_id: str,
        memory: Memory,
        tenant_id: str = LOCAL_TENANT,
        user_id: str | None = None,
        erase_wait_s: float | None = None,
    ) -> None:
        super().__init__()
        self.session_id = session_id
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.erase_wait_s = erase_wait_s
        self._memory = memory

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        # The base class declares a plain attribute; a history on the log can only read.
        """The session's messages, in log order."""
        return self._memory.blocking(self.aget_messages)

    async def aget_messages(self) -> list[BaseMessage]:
        """The session's messages, in log order."""
        stored = await self._memory.read(self.tenant_id, self.session_id)
        return [_message(s) for s in stored]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append the messages, in order, all or nothing."""
        self._memory.blocking(lambda: self.aadd_messages(messages))

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append the messages, in order, all or nothing."""
        if not messages:
            return
        await self._memory.remember_fresh([self._appended(m) for m in messages])

    def clear(self) -> None:
        """Erase the session from every store (see :meth:`aclear`)."""
        self._memory.blocking(self.aclear)

    async def aclear(self) -> None:
        """Erase the session: reads hide it at once, the projectors delete it from every
        store; with ``erase_wait_s``, wait that long for the proof (else
        :class:`~surfaces.memory.ErasePendingError`)."""
        await self._memory.forget(
            self.tenant_id, self.session_id, reason="langchain clear", wait_s=self.erase_wait_s
        )

    def _appended(self, message: BaseMessage) -> Message:
        content, metadata = pack(
            message_to_dict(message), KIND, self._memory.settings.producer.limits
        )
        return Message(
            tenant_id=self.tenant_id,
            session_id=self.session_id,
            role=_role(message),
            content=content,
            name=_speaker(message),
            user_id=self.user_id,
            metadata=metadata,
        )


def _message(stored: StoredMessage) -> BaseMessage:
    original: dict[str, Any] | None = unpack(stored.message, KIND)
    if original is not None:
        try:
            return messages_from_dict([original])[0]
        except (KeyError, TypeError, ValueError):
            pass  # not a LangChain message after all (written by hand): read it plainly
    return _plain(stored.message)
