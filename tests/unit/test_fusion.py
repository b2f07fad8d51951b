"""The fusion's three steps, each shown by the smallest case that needs it."""

from __future__ import annotations

import pytest

from projectors.position import Position
from projectors.store import Turn
from rehydrator.fusion import FusionWeights, fuse, named_speaker


def turns(n: int, names: tuple[str | None, ...] = ("Ada", "Ben")) -> list[Turn]:
    return [
        Turn(
            message_id=f"m{i}",
            role="user" if i % 2 == 0 else "assistant",
            name=names[i % len(names)],
            position=Position(i, 0),
        )
        for i in range(n)
    ]


def ranked(scores: dict[str, float]) -> list[str]:
    return sorted(scores, key=lambda i: -scores[i])


def test_channels_are_z_scored_so_their_scales_do_not_matter() -> None:
    session = turns(6)
    dense = {"m1": 0.9, "m2": 0.1, "m4": 0.1}
    lexical = {"m4": 900.0, "m5": 800.0}  # a different scale entirely
    no_window = FusionWeights(window=0.0, speaker=0.0)
    scores = fuse(session, dense, lexical, "anything", no_window)
    scaled = fuse(session, dense, {k: v / 100 for k, v in lexical.items()}, "anything", no_window)
    assert scores == pytest.approx(scaled)
    assert ranked(scores)[0] in {"m1", "m4"}


def test_a_turn_next_to_a_strong_match_rises_above_an_isolated_weak_one() -> None:
    session = turns(9)
    dense = {**{t.message_id: 0.0 for t in session}, "m4": 1.0, "m8": 0.3}
    without = fuse(session, dense, {}, "q", FusionWeights(window=0.0, speaker=0.0))
    with_window = fuse(session, dense, {}, "q", FusionWeights(speaker=0.0))
    assert without["m5"] < without["m8"]
    assert with_window["m5"] > with_window["m8"]  # one turn after the match
    assert with_window["m6"] > with_window["m8"]  # two turns after (radius 2)
    assert with_window["m0"] < with_window["m8"]  # out of reach


def test_the_named_speakers_turns_get_the_bonus_only_when_one_is_named() -> None:
    session = turns(4)
    dense = {"m0": 0.5, "m1": 0.5, "m2": 0.5, "m3": 0.5}
    no_window = FusionWeights(window=0.0)
    one = fuse(session, dense, {}, "What did ben say?", no_window)
    assert one["m1"] == one["m3"] > one["m0"] == one["m2"]
    both = fuse(session, dense, {}, "Did Ada call Ben?", no_window)
    assert len(set(both.values())) == 1
    assert named_speaker("Benedict came", ["Ben"]) is None  # whole words only


def test_roles_are_not_speaker_names() -> None:
    session = turns(4, names=(None,))
    scores = fuse(session, {"m0": 0.2, "m1": 0.2}, {}, "what did the user say", FusionWeights())
    assert len(set(scores.values())) == 1


def test_a_missing_channel_leaves_the_other_to_rank_alone() -> None:
    session = turns(5)
    lexical = {"m3": 5.0, "m1": 1.0}
    scores = fuse(session, {}, lexical, "q", FusionWeights(window=0.0, speaker=0.0))
    assert ranked(scores)[:2] == ["m3", "m1"]
    assert fuse(session, {}, {}, "q") == dict.fromkeys([t.message_id for t in session], 0.0)
    assert fuse([], {"x": 1.0}, {}, "q") == {}
