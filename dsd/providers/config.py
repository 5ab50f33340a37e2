"""Typed configuration of one LLM/VLM provider."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..config import path_field
from .errors import ProviderAuthError

ProviderKind = Literal["openai", "gemini"]

# The environment variables each kind reads its key from, first set wins (the one list the CLI and nodes use).
KEY_ENV_VARS: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}


@dataclass(frozen=True)
class ProviderConfig:
    """Which model to call, where, and how hard to try.

    ``kind="openai"`` is any OpenAI-compatible server (OpenAI, vLLM, Ollama, LM Studio): set
    ``base_url`` (e.g. ``http://127.0.0.1:8000/v1``) for a local one. ``api_key_env`` is the
    NAME of the environment variable that holds the key, never the key itself.
    """

    kind: ProviderKind
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 5
    max_concurrency: int = 8
    cache_dir: str | None = path_field(None)  # relative: to the config file (dsd.config.resolve_paths)
    input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0
    use_batch_api: bool = False
    # Exponential backoff with full jitter: sleep U(0, min(backoff_max_s, backoff_base_s * 2**attempt)).
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    # Malformed / schema-violating answers are retried this many times before ProviderResponseError.
    max_malformed_retries: int = 2

    def __post_init__(self) -> None:
        if self.kind not in KEY_ENV_VARS:
            raise ValueError(f"ProviderConfig.kind must be 'openai' or 'gemini', got {self.kind!r}")
        if not self.model:
            raise ValueError("ProviderConfig.model is empty: name the model to call (e.g. 'gpt-4o-mini')")
        if self.timeout_s <= 0:
            raise ValueError(f"ProviderConfig.timeout_s must be > 0, got {self.timeout_s}")
        if self.max_retries < 0 or self.max_malformed_retries < 0:
            raise ValueError("ProviderConfig.max_retries / max_malformed_retries must be >= 0")
        if self.max_concurrency < 1:
            raise ValueError(f"ProviderConfig.max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.use_batch_api and self.kind != "openai":
            raise ValueError("ProviderConfig.use_batch_api is only supported with kind='openai'")
        if self.api_key_env is not None and not self.api_key_env.replace("_", "").isalnum():
            # Catches the classic mistake of pasting the key itself into the config.
            raise ValueError(
                "ProviderConfig.api_key_env must be the NAME of an environment variable "
                "(e.g. 'OPENAI_API_KEY'), not the key itself"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProviderConfig:
        """Build from a TOML/JSON mapping; unknown keys and wrong types raise ``ValueError``."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(
                f"unknown provider config key(s) {unknown}; valid keys are {sorted(names)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            kwargs[key] = _coerce(key, value, hints[key])
        missing = [n for n in ("kind", "model") if n not in kwargs]
        if missing:
            raise ValueError(f"provider config is missing required key(s) {missing}")
        return cls(**kwargs)

    def key_env_names(self) -> tuple[str, ...]:
        return (self.api_key_env,) if self.api_key_env else KEY_ENV_VARS[self.kind]

    def resolve_api_key(self) -> str:
        """The key from the environment; a local server (``base_url`` set) may run without one."""
        for name in self.key_env_names():
            value = os.environ.get(name)
            if value:
                return value
        if self.base_url is not None and self.api_key_env is None:
            # vLLM / Ollama / LM Studio accept any key; the SDKs refuse an empty one.
            return "not-needed"
        names = " or ".join(self.key_env_names())
        raise ProviderAuthError(
            f"no API key for the {self.kind} provider: set the environment variable {names}"
        )

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / 1e6


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"provider config {key!r} must be one of {typing.get_args(hint)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ValueError(f"provider config {key!r} must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value
