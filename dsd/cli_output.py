"""The only place the `dsd` CLI prints: results and summaries for a person at a terminal."""

from __future__ import annotations

import sys


def emit(message: str = "") -> None:
    print(message, flush=True)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
