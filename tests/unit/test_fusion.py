"""The fusion's three steps, each shown by the smallest case that needs it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from projectors.position import Position
from projectors.store import MessageKey, Turn
from rehydrator.fusion import FusionWeights, fuse, named_speaker

Windows = dict[MessageKey, list[Turn]]


def turns(n: int, names: tuple[str | None, ...] = ("Ada", "Ben")) -> Windows:
    """A session of ``n`` turns as the windows of its hits: every turn is a hit here, each
    with its neighbours (radius 2)."""
    session = [
        Turn(
            session_id="s",
            message_id=f"m{i}",
            role="user" if i % 2 == 0 else "assistant",
            name=names[i % len(names)],
            position=Position(i, 0),
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        for i in range(n)
    ]
    return {t.key: session[max(0, i - 2) : i + 3] for i, t in enumerate(session)}


def keyed(scores: dict[str, float]) -> dict[MessageKey, float]:
    return {("s", k): v for k, v in scores.items()}


def ranked(scores: dict[MessageKey, float]) -> list[str]:
    return [k[1] for k in sorted(scores, key=lambda k: -scores[k])]


def test_channels_are_z_scored_so_their_scales_do_not_matter() -> None:
    session = turns(6)
    dense = {"m1": 0.9, "m2": 0.1, "m4": 0.1}
    lexical = {"m4": 900.0, "m5": 800.0}  # a different scale entirely
    no_window = FusionWeights(window=0.0, speaker=0.0)
    scores = fuse(session, keyed(dense), keyed(lexical), "anything", no_window)
    scaled = fuse(
        session,
        keyed(dense),
        keyed({k: v / 100 for k, v in lexical.items()}),
        "anything",
        no_window,
    )
    assert scores == pytest.approx(scaled)
    assert ranked(scores)[0] in {"m1", "m4"}


def test_a_turn_next_to_a_strong_match_rises_above_an_isolated_weak_one() -> None:
    session = turns(9)
    dense = keyed({**{k[1]: 0.0 for k in session}, "m4": 1.0, "m8": 0.3})
    without = fuse(session, dense, {}, "q", FusionWeights(window=0.0, speaker=0.0))
    with_window = fuse(session, dense, {}, "q", FusionWeights(speaker=0.0))
    assert without["s", "m5"] < without["s", "m8"]
    assert with_window["s", "m5"] > with_window["s", "m8"]  # one turn after the match
    assert with_window["s", "m6"] > with_window["s", "m8"]  # two turns after (radius 2)
    assert with_window["s", "m0"] < with_window["s", "m8"]  # out of reach


def test_the_named_speakers_turns_get_the_bonus_only_when_one_is_named() -> None:
    session = turns(4)
    dense = keyed({"m0": 0.5, "m1": 0.5, "m2": 0.5, "m3": 0.5})
    no_window = FusionWeights(window=0.0)
    one = fuse(session, dense, {}, "What did ben say?", no_window)
    assert one["s", "m1"] == one["s", "m3"] > one["s", "m0"] == one["s", "m2"]
    both = fuse(session, dense, {}, "Did Ada call Ben?", no_window)
    assert len(set(both.values())) == 1
    assert named_speaker("Benedict came", ["Ben"]) is None  # whole words only


def test_roles_are_not_speaker_names() -> None:
    session = turns(4, names=(None,))
    scores = fuse(session, keyed({"m0": 0.2, "m1": 0.2}), {}, "what did the user say")
    assert len(set(scores.values())) == 1


def test_a_missing_channel_leaves_the_other_to_rank_alone() -> None:
    session = turns(5)
    lexical = keyed({"m3": 5.0, "m1": 1.0})
    scores = fuse(session, {}, lexical, "q", FusionWeights(window=0.0, speaker=0.0))
    assert ranked(scores)[:2] == ["m3", "m1"]
    assert fuse(session, {}, {}, "q") == dict.fromkeys(session, 0.0)
    assert fuse({}, keyed({"x": 1.0}), {}, "q") == {}
