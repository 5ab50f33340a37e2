"""The only module that prints: results and summaries for a person at a terminal (stdout) and the
one-line error of a failed command (stderr). Library code logs instead; see dsd/cli.py."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def emit(message: str = "") -> None:
    print(message, flush=True)


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def table(title: str, rows: Iterable[tuple[str, Any]]) -> None:
    rows = list(rows)
    width = max((len(k) for k, _ in rows), default=0)
    lines = [title, "-" * max(len(title), 40), *(f"  {k:<{width}}  {v}" for k, v in rows)]
    emit("\n".join(lines))
