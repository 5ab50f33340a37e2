"""OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, LM Studio) via the official SDK."""

from __future__ import annotations

import json
from typing import Any

import openai

from . import batch
from .base import Provider, RawAnswer
from .endpoints import NO_KEY, OFFICIAL_ENDPOINTS
from .errors import ProviderError, redact
from .openai_wire import build_body, parse_completion
from .retry import Malformed, Transient, no_connection, retry_after_from_headers, status_text
from .types import ChatRequest

OPENAI_DEFAULT_URL = OFFICIAL_ENDPOINTS["openai"]
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIProvider(Provider):
    @property
    def endpoint_url(self) -> str:
        return (self.config.base_url or OPENAI_DEFAULT_URL).rstrip("/") + "/chat/completions"

    @property
    def is_official(self) -> bool:
        return self.config.is_official

    def _client_options(self, api_key: str | None) -> dict[str, Any]:
        # Everything explicit, so the SDK reads neither OPENAI_BASE_URL (which could redirect a key)
        # nor OPENAI_API_KEY itself; max_retries=0: retries and backoff are ours.
        return {"api_key": api_key or NO_KEY, "base_url": self.config.base_url or OPENAI_DEFAULT_URL,
                "timeout": self.config.timeout_s, "max_retries": 0}

    def _make_client(self, api_key: str | None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(**self._client_options(api_key))

    def make_sync_client(self) -> openai.OpenAI:
        """A blocking client (used by the Batch API helpers)."""
        return openai.OpenAI(**self._client_options(self.api_key()))

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
            # No key for this endpoint: no Authorization header at all (not even the placeholder).
            options: Any = {} if self._api_key else {"headers": {"Authorization": openai.Omit()}}
            text = await client.post("/chat/completions", cast_to=str, body=body, options=options)
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
        if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
            # One text for refused, reset, non-HTTP and silent ports: errors must not map a network.
            return Transient(no_connection(self.config.timeout_s))
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return self.auth_error(exc.status_code)
        if isinstance(exc, openai.APIStatusError):
            detail = status_text(exc.status_code, redact(_error_detail(exc), key))
            if exc.status_code in _RETRY_STATUS:
                return Transient(detail, retry_after_from_headers(exc.response.headers))
            return ProviderError(
                f"{url} rejected the request ({detail}); "
                f"check the model name {self.config.model!r} and the request options"
            )
        if isinstance(exc, (openai.APIResponseValidationError, json.JSONDecodeError, ValueError)):
            return Malformed(f"unparseable response body ({type(exc).__name__})")
        return exc


def _error_detail(exc: openai.APIStatusError) -> str:
    """The message of an error body in OpenAI's JSON format; "" for anything else (an HTML page of
    whatever server base_url named is never echoed to the client)."""
    body = exc.body  # the SDK's parsed JSON ("error" object), or raw text when the body was not JSON
    if isinstance(body, dict):
        message = body.get("message")
        if not message and isinstance(body.get("error"), dict):
            message = body["error"].get("message")
        if isinstance(message, str) and message:
            return message[:300]
    return ""
