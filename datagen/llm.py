"""How the datagen stages use dsd.providers: one provider per stage, cached under the workdir,
and one rule for what a failed answer means.

- a malformed answer is a property of that item: it is recorded as a reject with its reason (the
  rerun does not ask again); a refused one too, once the stage's retry policy is spent (curation
  asks again, rephrased, ``curate.refusal_retries`` times first);
- an unreachable server after all retries is transient: the item stays undone, a rerun asks again;
- a missing or rejected API key would fail every item: the stage stops with the provider's message;
- an answer whose parsing raises (a bug, or a shape nobody foresaw) is its item's reject too, through
  the stage's ``summary.ItemErrors`` (reason ``"<step> failed (<Type>): ..."``), never the stage's end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .summary import StageSummary

LLM_FAILURES = "llm failures (retry on rerun)"
VLM_FAILURES = "vlm failures (retry on rerun)"


class LLMStageError(RuntimeError):
    """The stage cannot go on with this provider (e.g. no API key); the message says how to fix it."""


def make_stage_provider(cfg, cache_dir: Path):
    """A provider for ``cfg`` (ProviderConfig) whose answer cache lives in ``cache_dir`` unless the config names one."""
    from dsd.providers import make_provider

    if cfg.cache_dir is None:
        cfg = dataclasses.replace(cfg, cache_dir=str(cache_dir))
    return make_provider(cfg)


@contextmanager
def stage_provider(cfg, cache_dir: Path, summary: StageSummary) -> Iterator:
    """``make_stage_provider`` for the length of a stage (None when ``cfg`` is None); on the way out,
    even after an error, its token and cost usage goes into ``summary`` and it is closed."""
    if cfg is None:
        yield None
        return
    provider = make_stage_provider(cfg, cache_dir)
    try:
        yield provider
    finally:
        summary.usage = provider.usage
        provider.close()


def classify_error(exc: BaseException) -> tuple[Literal["reject", "transient", "fatal"], str]:
    from dsd.providers import (
        ProviderAuthError,
        ProviderRefusal,
        ProviderResponseError,
    )

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, ProviderAuthError):
        return "fatal", first
    if isinstance(exc, ProviderRefusal):
        return "reject", f"refused: {first}"
    if isinstance(exc, ProviderResponseError):
        return "reject", f"malformed answer: {first}"
    return "transient", first


def settle_failure(
    exc: BaseException, summary: StageSummary, where: str, *, items: int = 1, counter: str = LLM_FAILURES
) -> str | None:
    """The module's rule applied to one failed answer covering ``items`` items: the reject reason;
    None when it failed transiently (counted under ``summary.extra[counter]``, the items stay undone
    for a rerun); raises LLMStageError, prefixed with ``where``, when no item could succeed."""
    kind, reason = classify_error(exc)
    if kind == "fatal":
        raise LLMStageError(f"{where}: {reason}") from exc
    if kind == "transient":
        summary.add(counter, items)
        return None
    return reason
