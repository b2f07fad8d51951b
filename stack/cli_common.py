"""What every ``amem`` command shares: consoles, the ``--json`` flag, one-line errors."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, Any, ParamSpec, TypeVar

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from schemas.errors import AmemError, ConfigurationError, ValidationError

out = Console()
err = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")


def one_line_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn our typed errors into one line on stderr and a non-zero exit (2 = bad input)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except AmemError as exc:
            # The text is ours, not markup: "atomic-memory[mcp]" must print as written.
            err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            bad_input = isinstance(exc, ValidationError | ConfigurationError)
            raise typer.Exit(2 if bad_input else 1) from None

    return wrapper
