"""Everything `python -m datagen` prints (the only module of the package allowed to print)."""

from __future__ import annotations

import sys

from .summary import StageSummary

TOY_BANNER = (
    "*** TOY RUN: tiny random teacher, offline templates, curation skipped unless a vlm is configured. "
    "The output only exercises the pipeline; it is NOT a training dataset. ***"
)


def summary(s: StageSummary) -> None:
    print(s.render(), flush=True)


def line(text: str) -> None:
    print(text, flush=True)


def error(text: str) -> None:
    print(f"datagen: error: {text}", file=sys.stderr, flush=True)


def toy_banner() -> None:
    print(TOY_BANNER, flush=True)
