"""OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, LM Studio) via the official SDK."""

from __future__ import annotations

import json
from typing import Any

import openai

from . import batch
from .base import Provider, RawAnswer
from .errors import ProviderAuthError, ProviderError, redact
from .openai_wire import build_body, parse_completion
from .retry import Malformed, Transient, retry_after_from_headers
from .types import ChatRequest

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIProvider(Provider):
    @property
    def endpoint_url(self) -> str:
        return (self.config.base_url or OPENAI_DEFAULT_URL).rstrip("/") + "/chat/completions"

    @property
    def is_official(self) -> bool:
        return self.config.base_url is None or "api.openai.com" in self.config.base_url

    def _make_client(self, api_key: str) -> openai.AsyncOpenAI:
        # max_retries=0: retries, backoff and retry-after are ours (dsd.providers.retry).
        return openai.AsyncOpenAI(
            api_key=api_key, base_url=self.config.base_url, timeout=self.config.timeout_s, max_retries=0
        )

    def make_sync_client(self) -> openai.OpenAI:
        """A blocking client (used by the Batch API helpers)."""
        return openai.OpenAI(
            api_key=self.api_key(),
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=0,
        )

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        return build_body(self.config.model, request, self.is_official)

    async def _send(self, client: openai.AsyncOpenAI, request: ChatRequest) -> RawAnswer:
        body = self.build_body(request)
        # The SDK's documented low-level request (``client.post``) with the body we already built:
        # ``chat.completions.create`` would walk the whole body through its TypedDict transform and
        # build pydantic models of the answer only for us to dump them back to a dict; that was
        # about half of the client's CPU per request (profiled at 32 in flight). Same HTTP exchange,
        # same auth, same SDK exceptions.
        try:
            text = await client.post("/chat/completions", cast_to=str, body=body)
        except Exception as exc:  # noqa: BLE001 - translated into the provider vocabulary
            raise self.translate_error(exc) from None
        try:
            completion = json.loads(text)
        except ValueError:
            raise Malformed("unparseable response body (JSONDecodeError)") from None
        if not isinstance(completion, dict):
            raise Malformed(f"unparseable response body (a JSON {type(completion).__name__}, not an object)")
        return parse_completion(completion, self.endpoint_url)

    # -- OpenAI Batch API (implemented in batch.py) ------------------------------------------
    def submit_batch(self, requests: Any, *, metadata: dict[str, str] | None = None) -> str:
        """Start a Batch API job (custom_ids = indices or mapping keys); returns the batch id."""
        return batch.submit_batch(self, requests, metadata=metadata)

    def collect_batch(
        self, batch_id: str, *, requests: Any = None, poll_interval_s: float = 30.0, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Wait for a batch; ``{custom_id: ChatResult | ProviderError}`` (see batch.collect_batch)."""
        return batch.collect_batch(self, batch_id, requests=requests, poll_interval_s=poll_interval_s, timeout_s=timeout_s)

    def batch_status(self, batch_id: str) -> str:
        return batch.batch_status(self, batch_id)

    def translate_error(self, exc: BaseException) -> BaseException:
        """Map an SDK exception to Transient / Malformed / a ProviderError subclass."""
        url = self.endpoint_url
        key = self._api_key
        if isinstance(exc, openai.APITimeoutError):
            return Transient(f"timed out after {self.config.timeout_s:g}s")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return Transient(f"connection failed ({type(cause).__name__}: {redact(str(cause), key)[:200]})")
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            names = " or ".join(self.config.key_env_names())
            return ProviderAuthError(
                f"{url} rejected the API key (HTTP {exc.status_code}); set a valid key in the "
                f"environment variable {names}"
            )
        if isinstance(exc, openai.APIStatusError):
            detail = redact(_error_detail(exc), key)
            if exc.status_code in _RETRY_STATUS:
                return Transient(f"HTTP {exc.status_code}: {detail}", retry_after_from_headers(exc.response.headers))
            return ProviderError(
                f"{url} rejected the request (HTTP {exc.status_code}: {detail}); "
                f"check the model name {self.config.model!r} and the request options"
            )
        if isinstance(exc, (openai.APIResponseValidationError, json.JSONDecodeError, ValueError)):
            return Malformed(f"unparseable response body ({type(exc).__name__})")
        return exc


def _error_detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return str(message)[:300]
    return str(exc.message)[:300]

