"""The code blocks of a document, so that tests run them as written."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO

_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def code_blocks(document: str, language: str) -> list[str]:
    """Every fenced block of ``language`` in ``document`` (a path from the repository's
    root), in order."""
    text = (REPO / Path(document)).read_text()
    return [body for lang, body in _FENCE.findall(text) if lang == language]
