"""How the datagen stages use dsd.providers: one provider per stage, cached under the workdir,
and one rule for what a failed answer means.

- a malformed answer is a property of that item: it is recorded as a reject with its reason (the
  rerun does not ask again); a refused one too, once the stage's retry policy is spent (curation
  asks again, rephrased, ``curate.refusal_retries`` times first);
- an unreachable server after all retries is transient: the item stays undone, a rerun asks again;
- a missing or rejected API key would fail every item: the stage stops with the provider's message.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal


class LLMStageError(RuntimeError):
    """The stage cannot go on with this provider (e.g. no API key); the message says how to fix it."""


def make_stage_provider(cfg, cache_dir: Path):
    """A provider for ``cfg`` (ProviderConfig) whose answer cache lives in ``cache_dir`` unless the config names one."""
    from dsd.providers import make_provider

    if cfg.cache_dir is None:
        cfg = dataclasses.replace(cfg, cache_dir=str(cache_dir))
    return make_provider(cfg)


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
