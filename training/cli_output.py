"""Everything the training CLI prints (one-screen summaries); library code logs instead."""

from __future__ import annotations

import sys
from typing import Any


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def table(title: str, rows: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in rows) if rows else 0
    print(title)
    print("-" * max(len(title), 40))
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def text(message: str) -> None:
    print(message)
