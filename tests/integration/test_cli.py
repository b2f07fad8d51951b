"""The ``amem`` command as a newcomer runs it, against the real embedded stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import LOCOMO, REPO

AMEM = [sys.executable, "-m", "stack.cli"]


def amem(
    env: dict[str, str], *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AMEM, *args],
        env=env,
        input=stdin.decode("utf-8", "surrogateescape") if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


def log_total(env: dict[str, str]) -> int:
    status = amem(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    total: int = json.loads(status.stdout)["log"]["total"]
    return total


@pytest.mark.parametrize(
    ("args", "stdin", "field", "limit"),
    [
        (["--role", "wizard", "hello"], None, "role", "one of assistant, system, tool, user"),
        (["--role", "user", "-"], b"a" * (300 * 1024), "content", "262144 bytes"),
        (["--role", "user", "--id", "has space", "hello"], None, "id", "1-128 chars"),
    ],
    ids=["role", "content-size", "id-space"],
)
def test_bad_append_exits_non_zero_with_one_line_and_log_unchanged(
    stack_env: dict[str, str], args: list[str], stdin: bytes | None, field: str, limit: str
) -> None:
    before = log_total(stack_env)
    result = amem(stack_env, "append", "--tenant", "t", "--session", "s", *args, stdin=stdin)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith(f"error: {field}:")
    assert limit in line
    assert log_total(stack_env) == before


def test_append_prints_the_stream_id(stack_env: dict[str, str]) -> None:
    args = ["append", "--tenant", "t", "--session", "cli", "--role", "user", "--id", "c1"]
    first = amem(stack_env, *args, "--json", "hello")
    again = amem(stack_env, *args, "--json", "hello")
    assert first.returncode == 0, first.stderr
    one, two = json.loads(first.stdout), json.loads(again.stdout)
    assert one["stream_id"] == two["stream_id"]
    assert (one["duplicate"], two["duplicate"]) == (False, True)


@pytest.mark.skipif(not LOCOMO.exists(), reason=f"LoCoMo dev data not found at {LOCOMO}")
def test_importing_locomo_twice_appends_once(stack_env: dict[str, str]) -> None:
    env = {**stack_env, "AMEM_PARTITIONS": "8"}
    first = amem(env, "import", str(LOCOMO), "--tenant", "locomo", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout.strip().splitlines()[-1])
    assert (report["appended"], report["duplicates"], report["rejected"]) == (2760, 0, 0)
    second = json.loads(amem(env, "import", str(LOCOMO), "--tenant", "locomo", "--json").stdout)
    assert (second["appended"], second["duplicates"]) == (0, 2760)


def test_import_reports_rejected_records_and_goes_on(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    history = tmp_path / "chat.jsonl"
    history.write_text(
        '{"role": "user", "content": "hi"}\n'
        "not json\n"
        '{"role": "wizard", "content": "abracadabra"}\n'
        '{"role": "assistant", "content": "hello"}\n'
    )
    result = amem(stack_env, "import", str(history), "--json")
    report = json.loads(result.stdout)
    assert (report["appended"], report["rejected"]) == (2, 2)
    reasons = {r["source"]: r["reason"] for r in report["rejections"]}
    assert reasons["chat.jsonl:2"].startswith("not valid JSON")
    assert reasons["chat.jsonl:3"].startswith("role:")


def test_up_twice_is_harmless_and_down_leaves_no_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMEM_")}
    env["AMEM_HOME"] = str(tmp_path / "home")
    first = amem(env, "up", "--json")
    assert first.returncode == 0, first.stderr
    urls = json.loads(first.stdout)
    second = amem(env, "up", "--json")
    assert json.loads(second.stdout) == urls
    state = json.loads((tmp_path / "home" / "stack.json").read_text())
    pids = [rec["pid"] for rec in state["services"].values()]
    assert amem(env, "status").returncode == 0
    down = amem(env, "down", "--json")
    assert sorted(json.loads(down.stdout)["stopped"]) == ["mongo", "postgres", "redis"]
    assert not [pid for pid in pids if psutil.pid_exists(pid) and _not_zombie(pid)]
    assert amem(env, "status").returncode == 1
    assert json.loads(amem(env, "down", "--json").stdout) == {"stopped": []}


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
