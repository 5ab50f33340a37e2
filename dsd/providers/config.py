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
from .endpoints import EndpointError, endpoint_for, is_official, normalise_endpoint, registered_key_variable
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
    ``base_url`` (e.g. ``http://127.0.0.1:8000/v1``) for a local one; it is kept in the normal form
    of :func:`dsd.providers.endpoints.normalise_endpoint` (http/https only). ``api_key_env`` is the
    NAME of the environment variable that holds the key, never the key itself; see
    :meth:`resolve_api_key` for which key goes where.
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
        if self.base_url is not None:
            # A bad URL is an input error now, never a "transient" failure retried later.
            try:
                url = normalise_endpoint(self.base_url) if self.base_url.strip() else None
            except EndpointError as exc:
                raise ValueError(f"ProviderConfig.base_url: {exc}") from None
            object.__setattr__(self, "base_url", url)
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

    @property
    def endpoint(self) -> str:
        """The normalised endpoint this config calls (the official one when ``base_url`` is None)."""
        return endpoint_for(self.kind, self.base_url)

    @property
    def is_official(self) -> bool:
        return is_official(self.kind, self.endpoint)

    def resolve_api_key(self) -> str | None:
        """The key for this endpoint from the environment, or None: send the request without a key.

        In order: the variable the config names (``api_key_env``: the file names URL and key
        together); the variable ``DSD_ENDPOINT_KEYS`` registers for this exact endpoint; the
        provider's own variables, for its official endpoint only. Any other endpoint (a local
        vLLM / Ollama needs none) gets no key, so a base_url cannot collect ``OPENAI_API_KEY``.
        """
        names: tuple[str, ...] = ()
        if self.api_key_env:
            names = (self.api_key_env,)
        elif (registered := registered_key_variable(self.endpoint)) is not None:
            names = (registered,)
        elif self.is_official:
            names = KEY_ENV_VARS[self.kind]
        else:
            return None
        for name in names:
            value = os.environ.get(name)
            if value:
                return value
        raise ProviderAuthError(
            f"no API key for the {self.kind} provider at {self.endpoint}: set the environment variable "
            f"{' or '.join(names)}"
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
