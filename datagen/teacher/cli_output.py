"""The only place the standalone teacher CLI prints (ruff bans print elsewhere)."""

from __future__ import annotations

import sys


def show(text: str) -> None:
    print(text)


def error(text: str) -> None:
    print(f"error: {text}", file=sys.stderr)
