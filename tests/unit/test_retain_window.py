"""``AMEM_LOG_RETAIN``: what a hot window setting reads as, and what it refuses."""

from __future__ import annotations

import pytest

from projectors.retention import RetainWindow
from schemas.errors import ConfigurationError


@pytest.mark.parametrize(
    ("text", "window"),
    [
        ("count=10000", RetainWindow(count=10_000)),
        ("age=90", RetainWindow(age_s=90)),
        ("age=15m", RetainWindow(age_s=900)),
        ("age=7d", RetainWindow(age_s=7 * 86_400)),
        ("count=500, age=2h", RetainWindow(count=500, age_s=7_200)),
        ("count=0", RetainWindow(count=0)),
    ],
)
def test_a_window_reads_as_written(text: str, window: RetainWindow) -> None:
    assert RetainWindow.parse(text) == window
    assert RetainWindow.parse(str(window)) == window  # and prints as it reads


@pytest.mark.parametrize("text", ["off", "OFF", "none", ""])
def test_off_means_nothing_is_ever_trimmed(text: str) -> None:
    assert RetainWindow.parse(text) is None


@pytest.mark.parametrize("text", ["cnt=5", "count=5h", "age=-1", "age=1w", "count=", "5"])
def test_anything_else_is_refused_naming_the_setting(text: str) -> None:
    with pytest.raises(ConfigurationError, match="AMEM_LOG_RETAIN"):
        RetainWindow.parse(text)
