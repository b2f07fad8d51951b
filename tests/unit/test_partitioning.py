from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.constants import dedup_key, log_key
from schemas.partitioning import partition_for

WIRE_DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"
_VECTOR = re.compile(r"^\| `([^`]*)` \| `([^`]*)` \| (\d+) \| (\d+) \|$", re.MULTILINE)


def published_vectors() -> list[tuple[str, str, int, int]]:
    found = _VECTOR.findall(WIRE_DOC.read_text())
    return [(tenant, session, int(p), int(expected)) for tenant, session, p, expected in found]


def test_the_documentation_publishes_vectors() -> None:
    assert len(published_vectors()) >= 8


@pytest.mark.parametrize(("tenant", "session", "partitions", "expected"), published_vectors())
def test_published_vectors(tenant: str, session: str, partitions: int, expected: int) -> None:
    assert partition_for(tenant, session, partitions) == expected


@given(st.text(), st.text(), st.integers(1, 4096))
def test_partition_is_in_range_and_stable(tenant: str, session: str, partitions: int) -> None:
    first = partition_for(tenant, session, partitions)
    assert 0 <= first < partitions
    assert partition_for(tenant, session, partitions) == first


def test_keys_of_a_partition_share_its_hash_tag() -> None:
    assert log_key(3) == "amem:log:{3}"
    key = dedup_key(3, "msg", "t", "s", "m:1")
    assert key.split("{")[1].split("}")[0] == "3"
