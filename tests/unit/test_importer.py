"""What ``amem import`` reads: the ``user_id`` of chat records and LoCoMo conversations."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from producer.importer import Rejected, read_history
from schemas.events import Message
from tests.conftest import LOCOMO


def messages(path: Path) -> list[Message]:
    records = read_history(path, "t")
    assert not [r for r in records if isinstance(r, Rejected)], records
    return [r for r in records if isinstance(r, Message)]


def test_jsonl_records_carry_their_user(tmp_path: Path) -> None:
    history = tmp_path / "chat.jsonl"
    history.write_text(
        '{"role": "user", "content": "hi", "user_id": "ada"}\n'
        '{"role": "assistant", "content": "hello"}\n'
    )
    found = messages(history)
    assert [m.user_id for m in found] == ["ada", None]
    assert all("user_id" not in m.metadata for m in found)


def test_a_session_object_gives_its_user_to_its_messages(tmp_path: Path) -> None:
    history = tmp_path / "chat.json"
    history.write_bytes(
        orjson.dumps(
            [
                {
                    "session_id": "s-1",
                    "user_id": "ada",
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "user", "content": "as bob", "user_id": "bob"},
                    ],
                }
            ]
        )
    )
    assert [m.user_id for m in messages(history)] == ["ada", "bob"]


def test_a_bad_user_id_is_rejected_with_its_reason(tmp_path: Path) -> None:
    history = tmp_path / "chat.jsonl"
    history.write_text('{"role": "user", "content": "hi", "user_id": "has space"}\n')
    (rejected,) = read_history(history, "t")
    assert isinstance(rejected, Rejected)
    assert rejected.reason.startswith("user_id:")


@pytest.mark.skipif(not LOCOMO.exists(), reason=f"LoCoMo dev data not found at {LOCOMO}")
def test_a_locomo_conversation_is_the_memory_of_one_user() -> None:
    found = messages(LOCOMO)
    assert {m.user_id for m in found} == {m.session_id for m in found}
