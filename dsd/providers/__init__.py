"""LLM/VLM providers shared by prompt enhancement, datagen (prompts, filtering, curation) and evaluation.

Two kinds, both through their official SDKs: ``openai`` (any OpenAI-compatible server:
OpenAI, vLLM, Ollama, LM Studio) and ``gemini`` (google-genai). Both give the same contract:
retries with backoff and ``retry-after``, bounded concurrency, structured JSON output checked
against a schema, an on-disk answer cache keyed by endpoint, token/cost accounting, and errors
that say what to fix without ever containing the API key. A key goes only to the endpoint it was
given for (``endpoints``: official endpoint, or one its owner registered).

    provider = make_provider(ProviderConfig(kind="gemini", model="gemini-1.5-flash"))
    result = provider.complete(ChatRequest("Describe this", images=(image_to_png_bytes(img),)))
"""

from __future__ import annotations

from .base import Provider
from .cache import request_cache_key
from .config import ProviderConfig, ProviderKind
from .errors import (
    ProviderAuthError,
    ProviderError,
    ProviderRefusal,
    ProviderResponseError,
    ProviderUnavailable,
)
from .types import ChatRequest, ChatResult, Usage, image_to_png_bytes


def make_provider(config: ProviderConfig, *, api_key: str | None = None) -> Provider:
    """The provider for ``config.kind`` (SDK imported only for the kind used).

    ``api_key`` passes a key held in memory for ``config``'s endpoint (the ComfyUI key store);
    without it ``config.resolve_api_key()`` picks one from the environment when the first request
    needs it: the provider's own variables only for its official endpoint, a registered one
    (``api_key_env``, ``DSD_ENDPOINT_KEYS``) for any other, else none (see ``endpoints``).
    """
    if config.kind == "openai":
        from .openai_provider import OpenAIProvider

        return OpenAIProvider(config, api_key=api_key)
    if config.kind == "gemini":
        from .gemini_provider import GeminiProvider

        return GeminiProvider(config, api_key=api_key)
    raise ValueError(f"unknown provider kind {config.kind!r}; use 'openai' or 'gemini'")


__all__ = [
    "ChatRequest",
    "ChatResult",
    "Provider",
    "ProviderAuthError",
    "ProviderConfig",
    "ProviderError",
    "ProviderKind",
    "ProviderRefusal",
    "ProviderResponseError",
    "ProviderUnavailable",
    "Usage",
    "image_to_png_bytes",
    "make_provider",
    "request_cache_key",
]
