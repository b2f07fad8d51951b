"""Cheap, LLM-free entity extraction: proper-noun runs and a few precise patterns.

:func:`extract_entities` returns the distinct entities of a message in the order they first
appear, each in a normalized surface form, at most :data:`MAX_ENTITIES` of them. It is pure,
deterministic and downloads nothing; a typical chat turn takes some tens of microseconds.

What it finds, in one pass over :func:`normalize` ``(text)``:

- **proper-noun runs**: consecutive capitalized words (``Harry Potter``, ``Amy Ellis Nutt``),
  allowing lower-case joiners inside a run (``Bank of America``, ``Vincent van Gogh``,
  ``Lord of the Rings``), ``&`` (``Barnes & Noble``) and titles (``Dr. Smith``). A run that
  opens a sentence loses its leading common words (``Hey Joanna`` -> ``Joanna``); a run made
  only of common words is dropped (``Thanks``, ``I``, ``OMG``), and so is a single word opening
  a sentence that looks like a verb or adverb (``Organizing``, ``Finished``, ``Honestly``).
  A trailing possessive is cut (``Oliver's`` -> ``Oliver``). Lone month and weekday names are
  not entities (``on Friday``); dates are.
- **dates**: ``May 7``, ``7 May 2023``, ``8 May, 2023``, ``June 2023``, ``2023-05-07``,
  ``5/7/2023``, and a year after a preposition (``in 2022`` -> ``2022``);
- **quoted titles**: a short title-case string in double quotes (``"Becoming Nicole"``);
- **hashtags** and **@mentions** (``#Pride``, ``@caroline``), and **amounts of money**
  (``$1,200``, ``€15``).

URLs and e-mail addresses are skipped. Entities are compared case-insensitively: the first
surface form wins; none is longer than 100 characters. Every entity is a substring of
``normalize(text)``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

__all__ = ["MAX_ENTITIES", "MAX_ENTITY_CHARS", "extract_entities", "normalize"]

MAX_ENTITIES: Final = 16
"""At most this many entities per message: the first ones in text order."""

MAX_ENTITY_CHARS: Final = 100
"""A longer match is a blob (base64, a run of capitals), not an entity."""

MAX_RUN_WORDS: Final = 6
"""A capitalized run longer than this is a title-case heading or shouting, not a name."""

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """The form entities are taken from: NFKC, straight quotes, single spaces.

    Every entity :func:`extract_entities` returns is a substring of this string.
    """
    return _SPACES.sub(" ", _fold(text))


def _fold(text: str) -> str:
    if text.isascii():
        return text  # NFKC and the quote folding leave ASCII as it is
    return unicodedata.normalize("NFKC", text).translate(_QUOTES)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words that, capitalized, are almost never a name on their own: function words, chat
# interjections, frequent verbs, nouns and adjectives of everyday talk. A single-word run in
# this list (or its plural, see _is_common) is dropped, and a run opening a sentence loses its
# leading words that are in it. Names that are also common words (Will, Grace, Hope) are
# therefore found only inside longer runs.
COMMON_WORDS: Final = _words(
    """
    a about above across actually after afternoon afterwards again against ago agree agreed
    ah aha ahead ahh all almost alone along already alright also although always am amazing
    among an and another any anybody anyone anything anytime anyway anyways anywhere apart
    are around as ask at aw away awesome aww awww baby back bad basically be beautiful because
    been before behind being believe below beside besides best bet better between beyond big
    bit both brave bring brother brilliant btw build busy but bummer buy by bye call can
    cannot care catch certainly change chat cheers cherish child children choose class close
    come community confident congrats congratulations cool could count cozy crazy create cute
    dad damn dang darn daughter day days dear definitely did different difficult do does doing
    done down draw dream during each earlier early easy eat either else enjoy enough
    especially even evening ever every everybody everyone everything everywhere exactly
    excellent excited exciting faith family fantastic father feel felt few final finally find
    fine finish first five follow for forget four free friend from fun funny further fyi game
    gather gee geez get give glad go goal goes gonna good goodbye goodnight gorgeous got gosh
    gotcha gotta grateful great grow guess guy ha hah haha hahaha hang happen happy hard has
    have having he health hear heard heart hehe hello help her here hers herself hey hi high
    highly him himself his hiya hm hmm hold home honestly hooray hope how however huh hurray
    husband i idea idk if imagine imo important impressive in incredible indeed inspire
    instead interesting into is it its itself jealous jeez job join just keep kid kinda knew
    know last lately later learn least leave less let lets life like likely listen literally
    little live lmao lol long look lot love lovely luck lucky made main mainly make man many
    may maybe me mean means meet mental mind mine miss mixed mm mmm mom moment money month
    more morning most mostly mother move much must my myself nah nature need neither never
    nevertheless new news next nice night no nobody none nope nor not nothing now nowhere of
    off often oh ohh ok okay old on once one only onto oof oops open or other others
    otherwise ouch our ours ourselves out over overall own parent part partner party pay
    people perfect perhaps person pet phew pic picture place plan play please plus positive
    practice pretty probably progress promise proud push put quality quite rather reach read
    real really recently relax remember remind respect rest right run sad said same save saw
    say school second see seem seen send seriously set setback several shall share she should
    show simple since sir sister small so some somebody someone something sometime sometimes
    somewhat somewhere son soon sorry sound special speak spend start stay still stop story
    strong struggle study stuff success such super support sure sweet take talk team tell
    terrific than thank thankful thanks thanx that the their theirs them themselves then there
    therefore these they thing think third this those though thought three through throughout
    thus thx time tip tired to today together tomorrow ton tonight too tough totally toward
    towards travel trip true truly trust try turn two ty ugh uh um umm under understand unless
    until up upon us use very via visit wait walk wanna want was watch way we week weekend
    welcome well went were what whatever when whenever where wherever whether which while who
    whoa whoever whole whom whose why wife will win wish with within without woah woo woohoo
    wonder wonderful word work world worry worse worst would wow write wrong yay yea yeah year
    yep yes yesterday yet yikes yo you young your yours yourself yourselves yum yup
    animal art book car challenge city coffee course dance dinner event exam experience fan
    feeling flower food friendship hobby house joy kindness lesson meal memory movie music
    obstacle opportunity painting passion peace photo pottery project rejection sport
    strength theme tournament assignment turtle video wedding yoga
    allergy appreciate balance basketball blue came capture chef chess check clay coconut
    confidence contemporary domestic eight epic fantasy finger football going guidance
    guitar had horse hundred injury laughter left liked lost loved met mentor nine orange
    piano pink purple red rock seven six soccer spill store tackle ten thousand told took
    tried trilogy twenty unconditional veggie visual yellow
    omg tbh np ikr smh brb ttyl xo xoxo ma lemme looky kudos
    don isn aren didn wasn weren hasn haven hadn doesn couldn wouldn shouldn won ain
    """
)

# Months and weekdays alone are not entities ("on Friday"); inside a longer run they are
# kept ("Black Friday") and with a number they make a date.
_TEMPORAL: Final = _words(
    """
    january february march april may june july august september october november december
    feb mar apr jun jul aug sep sept oct nov dec
    monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thur thurs fri
    sat sun
    """
)

# Lower-case words allowed inside a capitalized run, between two capitalized words.
_JOINERS: Final = _words("of de van von der den du da di del della la le y bin al")
# Titles that may open a run followed by a full stop that does not end the sentence.
_TITLES: Final = _words("mr mrs ms dr prof st mt sr jr capt gen sen rev fr lt col sgt")
# Capitalized words that always break a run: the pronoun and the article.
_BREAKERS: Final = frozenset({"i", "a"})

_MONTH = (
    r"(?:Jan(?:uary|\.)?|Feb(?:ruary|\.)?|Mar(?:ch|\.)?|Apr(?:il|\.)?|May|June?|July?"
    r"|Aug(?:ust|\.)?|Sep(?:t(?:ember)?)?\.?|Oct(?:ober|\.)?|Nov(?:ember|\.)?|Dec(?:ember|\.)?)"
    r"(?![^\W\d_])"
)
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?\b"
_YEAR = r"(?:1[89]|20)\d\d\b"
_DATE = re.compile(
    rf"\b(?:{_MONTH}[ \t]+{_DAY}(?:,?[ \t]+{_YEAR})?"
    rf"|{_DAY}[ \t]+(?:of[ \t]+)?{_MONTH}(?:,?[ \t]+{_YEAR})?"
    rf"|{_MONTH}[ \t]+{_YEAR}"
    rf"|{_YEAR}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])\b"
    rf"|(?:0?[1-9]|[12]\d|3[01])/(?:0?[1-9]|[12]\d|3[01])/(?:{_YEAR}|\d\d\b))"
)
_YEAR_AFTER = re.compile(
    rf"\b(?:[Ii]n|[Ss]ince|[Ff]rom|[Uu]ntil|[Tt]ill|[Bb]y|[Dd]uring|[Aa]round)[ \t]+({_YEAR})"
    r"(?![-/:.,]?\d)"
)
_MONEY = re.compile(
    r"(?<![\w$€£])[$€£][ \t]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d{1,2})?"
    r"(?:[ \t]?(?:k|K|[mM]illion|[bB]illion|[tT]housand)\b)?(?![\d,.]\d)"
)
_HASHTAG = re.compile(r"(?<![\w#&/])#[^\W\d_]\w{0,49}")
_MENTION = re.compile(r"(?<![\w@.])@\w{1,30}\b")
_QUOTED = re.compile(r'"(\S[^"\n]{0,78}\S|\S)"')
_SKIP = re.compile(r"\b(?:https?://|www\.)\S+|(?<![^\s<(\[,;:\"'])[^\s@]{1,64}@[^\s@]{1,255}")
_WORD = re.compile(r"[^\W\d_](?:\w|['\-](?=\w))*")
_SENTENCE_END = re.compile(r"[.!?:;\n\u2026]")
_SHORT_GAP = re.compile(r"[ \t]{1,3}")
_AMP_GAP = re.compile(r"[ \t]+&[ \t]+")
_TITLE_GAP = re.compile(r"\.[ \t]{0,3}")
_DIGIT = re.compile(r"\d")
_FAST_REJECT = re.compile(r'[A-Z#@"$€£\d]|[^\x00-\x7f]')

Span = tuple[int, int, str]
"""Start and end in the folded text, and the entity's surface form."""


def extract_entities(text: str) -> list[str]:
    """The distinct entities of ``text`` in first-appearance order, at most 16.

    Deterministic, never raises on any string, downloads nothing. See the module's doc for
    what counts as an entity.
    """
    if not _FAST_REJECT.search(text):
        return []  # no capital, digit, symbol or non-ASCII letter: nothing to find
    folded = _fold(text)
    found: list[Span] = []
    taken = bytearray(len(folded))  # 1 where a pattern (or a URL) already claimed the text
    # Each pattern runs only where its marker is present: most chat turns have no digit,
    # "#", "@", "$" or quote, and skipping a regex scan is most of the speed.
    if "@" in folded or "://" in folded or "www." in folded:
        for match in _SKIP.finditer(folded):
            _claim(taken, *match.span())
    patterns: list[tuple[re.Pattern[str], int]] = []
    if _DIGIT.search(folded):
        patterns += [(_DATE, 0), (_YEAR_AFTER, 1)]
        if "$" in folded or "€" in folded or "£" in folded:
            patterns.append((_MONEY, 0))
    if "#" in folded:
        patterns.append((_HASHTAG, 0))
    if "@" in folded:
        patterns.append((_MENTION, 0))
    for pattern, group in patterns:
        for match in pattern.finditer(folded):
            _offer(match.start(group), match.end(group), match.group(group), found, taken)
    if '"' in folded:
        for match in _QUOTED.finditer(folded):
            if _is_title(match.group(1)):
                _offer(match.start(1), match.end(1), match.group(1), found, taken)
    _add_runs(folded, found, taken)
    found.sort(key=lambda span: span[0])
    entities: dict[str, str] = {}
    for _, _, surface in found:
        if len(surface) <= MAX_ENTITY_CHARS:
            entities.setdefault(surface.casefold(), surface)
        if len(entities) == MAX_ENTITIES:
            break
    return list(entities.values())


def _claim(taken: bytearray, start: int, end: int) -> None:
    taken[start:end] = b"\x01" * (end - start)


def _offer(start: int, end: int, surface: str, found: list[Span], taken: bytearray) -> None:
    """Keep a pattern's match unless an earlier pattern claimed part of its text."""
    if taken.find(1, start, end) == -1:
        found.append((start, end, _SPACES.sub(" ", surface)))
        _claim(taken, start, end)


def _is_title(candidate: str) -> bool:
    """Title case, at most 10 words, not a sentence: ``"Becoming Nicole"``, not ``"I do."``."""
    if not (candidate[0].isupper() or candidate[0].isdigit()):
        return False
    if candidate[-1] in ".!?,;:" or re.search(r"[.!?;] ", candidate):
        return False
    words = candidate.split()
    if len(words) > 10:
        return False
    long_words = [w for w in words if len(w) > 3]
    capitalized = sum(w[0].isupper() or w[0].isdigit() for w in long_words)
    if 2 * capitalized < len(long_words):
        return False
    return not all(_key(w) in COMMON_WORDS for w in words)


def _key(word: str) -> str:
    """The word as looked up in the word lists: lower case, without ``'s``, ``'m``, ``n't``."""
    lower = word.casefold()
    cut = lower.find("'")
    return lower[:cut] if cut > 0 else lower


def _is_common(key: str) -> bool:
    """In :data:`COMMON_WORDS`, or a plural of a word in it (``flowers``, ``memories``)."""
    if key in COMMON_WORDS:
        return True
    if key.endswith("s") and len(key) > 3:
        if key[:-1] in COMMON_WORDS:
            return True
        if key.endswith("es") and key[:-2] in COMMON_WORDS:
            return True
        if key.endswith("ies") and key[:-3] + "y" in COMMON_WORDS:
            return True
    return False


_OPENER_SUFFIXES: Final = (
    "ing", "ed", "ness", "ment", "ments", "tion", "tions", "sion", "ship", "ity", "ities",
    "ous", "ive", "ful", "less", "able", "ible", "ism",
)  # fmt: skip


def _is_opener(word: str, key: str) -> bool:
    """A word that, opening a sentence, is not a name: a common word, or one that reads as a
    verb, adverb or abstract noun (``Organizing``, ``Honestly``, ``Unemployment``)."""
    if _is_common(key) or key in _JOINERS:
        return True
    if "-" in key:  # "Real-life", "Breath-taking"; not "Spider-Man"
        head, _, tail = key.rpartition("-")
        return _is_common(head.partition("-")[0]) or _has_opener_suffix(tail)
    return _has_opener_suffix(key)


def _has_opener_suffix(key: str) -> bool:
    return (len(key) >= 6 and key.endswith(_OPENER_SUFFIXES)) or (
        len(key) >= 7 and key.endswith("ly")
    )


def _is_capitalized(word: str) -> bool:
    """``Harry``, ``LGBTQ``, ``iPhone``, ``eBay``."""
    return word[0].isupper() or (len(word) > 1 and word[0].islower() and word[1].isupper())


def _add_runs(text: str, found: list[Span], taken: bytearray) -> None:
    """Proper-noun runs among the words that no pattern claimed."""
    run: list[re.Match[str]] = []
    pending: list[re.Match[str]] = []  # joiners after the run, kept if a capital follows
    run_initial = False
    previous_end, previous_word, previous_key = -1, "", ""  # -1: no word yet
    for match in _WORD.finditer(text):
        start, end = match.span()
        head = text[start]
        if not run and not (
            head.isupper() or (end - start > 1 and head.islower() and text[start + 1].isupper())
        ):
            previous_end, previous_word, previous_key = end, "", ""  # lower case, no run
            continue
        word = match.group()
        key = _key(word)
        gap = text[max(previous_end, 0) : start]
        # "Dr. Smith", "George R. R. Martin": a full stop that does not end the sentence,
        # unless a common word follows the initial ("... Plan B. Then we ...").
        dot_joins = _TITLE_GAP.fullmatch(gap) is not None and (
            previous_key in _TITLES
            or (len(previous_word) == 1 and previous_word.isupper() and not _is_common(key))
        )
        if run and not (
            dot_joins or _SHORT_GAP.fullmatch(gap) or (not pending and _AMP_GAP.fullmatch(gap))
        ):
            _close_run(run, run_initial, found)
            run, pending = [], []
        if taken.find(1, start, end) != -1:
            if run:
                _close_run(run, run_initial, found)
                run, pending = [], []
        elif _is_capitalized(word) and key not in _BREAKERS:
            if not run:
                run_initial = previous_end < 0 or (
                    not dot_joins and _SENTENCE_END.search(gap) is not None
                )
            run.extend(pending)
            pending = []
            run.append(match)
        elif run and ((key in _JOINERS and not pending) or (key == "the" and len(pending) == 1)):
            pending.append(match)  # "Bank of America", "Lord of the Rings"
        elif run:
            _close_run(run, run_initial, found)
            run, pending = [], []
        previous_end, previous_word, previous_key = end, word, key
    if run:
        _close_run(run, run_initial, found)


def _close_run(run: list[re.Match[str]], initial: bool, found: list[Span]) -> None:
    words = [m.group() for m in run]
    keys = [_key(w) for w in words]
    first = 0
    if initial:  # "Hey Joanna", "Thanks Mel", "Finished Harry Potter"
        while first < len(words) and _is_opener(words[first], keys[first]):
            first += 1
    words, keys = words[first:], keys[first:]
    if not words or len(words) > MAX_RUN_WORDS:
        return
    if all(_is_common(k) or k in _JOINERS for k in keys):
        return
    if len(words) == 1 and (keys[0] in _TEMPORAL or keys[0] in _TITLES or len(words[0]) < 2):
        return
    if words[-1].casefold().endswith("'s") and len(words[-1]) > 3:
        words[-1] = words[-1][:-2]  # "Oliver's" -> "Oliver"
    parts = [words[0]]
    for previous, match, word in zip(run[first:], run[first + 1 :], words[1:], strict=False):
        parts.append(_SPACES.sub(" ", match.string[previous.end() : match.start()]) + word)
    found.append((run[first].start(), run[-1].end(), "".join(parts)))
