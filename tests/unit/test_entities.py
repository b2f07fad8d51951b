from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projectors.enrichment.entities import (
    MAX_ENTITIES,
    MAX_ENTITY_CHARS,
    extract_entities,
    normalize,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # proper-noun runs; a sentence-opening greeting or thanks is not part of the name
        ("Hey Joanna! I loved Harry Potter.", ["Joanna", "Harry Potter"]),
        ("Thanks, Mel! See you soon.", ["Mel"]),
        ("Luna and Oliver are so sweet", ["Luna", "Oliver"]),
        ("I went to the Grand Canyon with Anthony and I.", ["Grand Canyon", "Anthony"]),
        # joiners, "&", titles and initials stay inside a run
        (
            "We met Vincent van Gogh at the Bank of America.",
            ["Vincent van Gogh", "Bank of America"],
        ),
        ("Dr. Smith loves Barnes & Noble", ["Dr. Smith", "Barnes & Noble"]),
        ("Reading J.K. Rowling and George R. R. Martin", ["J.K. Rowling", "George R. R. Martin"]),
        ("I just finished The Lord of the Rings", ["The Lord of the Rings"]),
        # possessive cut; acronyms and camel-case brands kept
        ("Oliver's bone is in my slipper", ["Oliver"]),
        ("The LGBTQ community loves my iPhone pics", ["LGBTQ", "iPhone"]),
        # common words, openers, lone months and weekdays are not entities
        ("Wow! Awesome! Congrats! Thank You So Much", []),
        ("Organizing a camp was great. Honestly, I loved it.", []),
        ("See you on Friday, not Black Friday.", ["Black Friday"]),
        # patterns
        ('I loved "Becoming Nicole" by Amy Ellis Nutt.', ["Becoming Nicole", "Amy Ellis Nutt"]),
        ('She said "I really do love it." and left', []),
        ("1:56 pm on 8 May, 2023", ["8 May, 2023"]),
        (
            "We met on May 7th, again in June 2023, and back in 2019.",
            ["May 7th", "June 2023", "2019"],
        ),
        ("It is due 2023-05-07 or 5/7/2023", ["2023-05-07", "5/7/2023"]),
        ("It cost $1,200 plus €15", ["$1,200", "€15"]),
        ("Loved #Pride with @caroline_s", ["#Pride", "@caroline_s"]),
        ("Write to bob@Example.com or see https://Example.com/Foo now", []),
        # curly quotes and apostrophes are folded; duplicates kept once, first form wins
        ("Nate\u2019s \u201cDune\u201d night with NATE and nate", ["Nate", "Dune"]),
        ("Maria said hi. Maria is great. MARIA!", ["Maria"]),
        ("", []),
        ("all lower case, no names here", []),
    ],
)
def test_examples(text: str, expected: list[str]) -> None:
    assert extract_entities(text) == expected


def test_cap_keeps_the_first_entities_in_text_order() -> None:
    names = [f"Name{chr(ord('A') + i)}x" for i in range(MAX_ENTITIES + 5)]
    text = "We met " + ", ".join(names) + "."
    assert extract_entities(text) == names[:MAX_ENTITIES]


def test_a_long_run_is_a_heading_not_a_name() -> None:
    assert extract_entities("we saw The Very Long Title Case Heading Goes On Here today") == []


@pytest.mark.parametrize(
    "blob",
    [
        "a@" * 32768,  # once made the e-mail pattern quadratic
        "A" * 65536,
        "Abc " * 16384,
        '"Ab ' * 16384,
        "$1" * 32768,
        "Harry Potter met Dr. Smith on May 7, 2023 at https://x.io #tag @m $5. " * 1000,
    ],
    ids=["at-signs", "capitals", "capitalized-words", "quotes", "dollars", "repeated"],
)
def test_large_pathological_inputs_finish_with_bounded_entities(blob: str) -> None:
    entities = extract_entities(blob)  # a regression here hangs into the test timeout
    assert len(entities) <= MAX_ENTITIES
    assert all(len(e) <= MAX_ENTITY_CHARS for e in entities)


def test_normalize_folds_quotes_and_spaces() -> None:
    assert normalize("\u201cDune\u201d\n\tby  Frank\u2019s") == '"Dune" by Frank\'s'


_PIECES = [
    "Harry", "Potter", "of", "the", "van", "and", "I", "Hey", "Thanks", "Dr.", "J.", "&",
    "May", "7th", "2023", "in", "Friday", "#Pride", "@mel", "$1,200", '"Dune"', "\u201c", "\u201d",
    "\u2019s", "'s", ".", ",", "!", "?", "\n", "-", "LGBTQ", "iPhone", "Organizing", "Straße",
    "ǅemal", "ﬁne", "Ⅻ", "https://x.io/A", "a@b.co", "É", "ß", "İstanbul", "٣", "\u0301",
]  # fmt: skip
chatty = st.lists(st.sampled_from(_PIECES), max_size=40).map(" ".join)
any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
texts = st.one_of(chatty, any_text, st.lists(st.sampled_from(_PIECES), max_size=40).map("".join))


@given(texts)
def test_entities_are_distinct_capped_substrings_of_the_normalized_text(text: str) -> None:
    entities = extract_entities(text)
    assert len(entities) <= MAX_ENTITIES
    assert len({e.casefold() for e in entities}) == len(entities)
    normalized = normalize(text)
    for entity in entities:
        assert entity
        assert entity == entity.strip()
        assert len(entity) <= MAX_ENTITY_CHARS
        assert entity in normalized


@given(texts)
def test_extraction_is_deterministic(text: str) -> None:
    assert extract_entities(text) == extract_entities(text)
    assert extract_entities(text) == extract_entities("".join(list(text)))
