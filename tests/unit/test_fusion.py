"""The fusion's steps, each shown by the smallest case that needs it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from projectors.position import Position
from projectors.store import MessageKey, Turn
from rehydrator.fusion import FusionWeights, fuse, named_speakers, without_names

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
        session, keyed(dense), keyed({k: v / 100 for k, v in lexical.items()}), "q", no_window
    )
    assert scores == pytest.approx(scaled)
    assert ranked(scores)[0] in {"m1", "m4"}


def test_a_turn_a_channel_did_not_return_scores_as_its_lowest_hit() -> None:
    session = turns(6)
    no_window = FusionWeights(window=0.0, speaker=0.0, dense=1.0)
    scores = fuse(session, keyed({"m0": 0.9, "m1": 0.5, "m2": 0.1}), {}, "q", no_window)
    assert scores["s", "m3"] == scores["s", "m2"] < scores["s", "m1"] < scores["s", "m0"]
    one = fuse(session, keyed({"m0": 0.9}), {}, "q", no_window)  # no spread: hit 1, others 0
    assert (one["s", "m0"], one["s", "m3"]) == (1.0, 0.0)


def test_a_turn_next_to_a_strong_match_rises_above_an_isolated_weak_one() -> None:
    session = turns(9)
    dense = keyed({**{k[1]: 0.0 for k in session}, "m4": 1.0, "m8": 0.3})
    without = fuse(session, dense, {}, "q", FusionWeights(window=0.0, speaker=0.0))
    with_window = fuse(session, dense, {}, "q", FusionWeights(speaker=0.0))
    assert without["s", "m5"] < without["s", "m8"]
    assert with_window["s", "m5"] > with_window["s", "m8"]  # one turn after the match
    assert with_window["s", "m6"] > with_window["s", "m8"]  # two turns after (radius 2)
    assert with_window["s", "m0"] < with_window["s", "m8"]  # out of reach


def test_neighbours_are_only_the_turns_of_a_hits_window() -> None:
    session = turns(9)
    # Two hits far apart: their windows are separate, so m2 and m6 are not neighbours.
    windows = {("s", "m1"): session["s", "m1"], ("s", "m7"): session["s", "m7"]}
    dense = keyed({"m1": 1.0, "m7": 0.0})
    scores = fuse(windows, dense, {}, "q", FusionWeights(speaker=0.0, dense=1.0))
    assert set(scores) == {("s", f"m{i}") for i in (0, 1, 2, 3, 5, 6, 7, 8)}
    assert scores["s", "m3"] > scores["s", "m5"]  # next to m1 (the better hit) vs next to m7


def test_every_named_speakers_turns_get_the_bonus() -> None:
    session = turns(6, names=("Ada", "Ben", "Cy"))
    dense = keyed({f"m{i}": 0.5 for i in range(6)})
    no_window = FusionWeights(window=0.0)
    one = fuse(session, dense, {}, "What did ben say?", no_window)
    assert one["s", "m1"] == one["s", "m4"] > one["s", "m0"] == one["s", "m2"]
    two = fuse(session, dense, {}, "Did Ada call Ben?", no_window)
    assert two["s", "m0"] == two["s", "m1"] > two["s", "m2"]
    assert named_speakers("Benedict came", ["Ben"]) == set()  # whole words only


def test_roles_are_not_speaker_names() -> None:
    session = turns(4, names=(None,))
    dense = keyed({"m0": 0.2, "m1": 0.4})
    scores = fuse(session, dense, {}, "what did the user say")
    assert scores == fuse(session, dense, {}, "what did the user say", FusionWeights(speaker=0))


def test_the_dense_query_leaves_out_the_speakers_names() -> None:
    names = ["Caroline", "Mel"]
    assert without_names("What did Caroline's sister tell Mel?", names) == "What did sister tell ?"
    assert without_names("Did Caroline\u2019s dog bark?", names) == "Did dog bark?"
    assert without_names("Caroline?", names) == "Caroline?"  # nothing else left: kept
    assert without_names("Melanie and Carolines", names) == "Melanie and Carolines"
    assert without_names("Anything", []) == "Anything"


def test_a_missing_channel_leaves_the_other_to_rank_alone() -> None:
    session = turns(5)
    lexical = keyed({"m3": 5.0, "m1": 1.0})
    scores = fuse(session, {}, lexical, "q", FusionWeights(window=0.0, speaker=0.0))
    assert ranked(scores)[0] == "m3"
    assert scores["s", "m1"] == scores["s", "m0"]  # the lowest hit, and the floor
    assert fuse(session, {}, {}, "q") == dict.fromkeys(session, 0.0)
    assert fuse({}, keyed({"x": 1.0}), {}, "q") == {}
