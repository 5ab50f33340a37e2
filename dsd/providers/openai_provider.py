"""OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, LM Studio) via the official SDK."""

from __future__ import annotations

import base64
import json
from typing import Any

import openai

from .base import Provider, RawAnswer
from .errors import ProviderAuthError, ProviderError, ProviderRefusal, redact
from .retry import Malformed, Transient, retry_after_from_headers
from .schema import openai_strict_schema
from .types import ChatRequest, image_mime_type

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def build_messages(request: ChatRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    if request.images:
        content: list[dict[str, Any]] = [{"type": "text", "text": request.prompt}]
        for image in request.images:
            uri = f"data:{image_mime_type(image)};base64,{base64.b64encode(image).decode('ascii')}"
            content.append({"type": "image_url", "image_url": {"url": uri}})
        messages.append({"role": "user", "content": content})
    else:
        messages.append({"role": "user", "content": request.prompt})
    return messages


def build_body(model: str, request: ChatRequest, official: bool) -> dict[str, Any]:
    """The chat-completions body (shared by online calls and Batch API lines)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": build_messages(request),
        "temperature": request.temperature,
    }
    # OpenAI deprecated max_tokens (reasoning models reject it); local servers still expect it.
    body["max_completion_tokens" if official else "max_tokens"] = request.max_output_tokens
    if request.json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": request.schema_name,
                "schema": openai_strict_schema(request.json_schema),
                "strict": True,
            },
        }
    return body


def parse_completion(completion: dict[str, Any], url: str) -> RawAnswer:
    """Text + tokens from a chat-completion object (as a plain dict); refusals raise."""
    choices = completion.get("choices") or []
    if not choices:
        raise Malformed("answer has no choices")
    choice = choices[0]
    message = choice.get("message") or {}
    if message.get("refusal"):
        raise ProviderRefusal(f"the model at {url} refused: {str(message['refusal'])[:200]}")
    if choice.get("finish_reason") == "content_filter":
        raise ProviderRefusal(f"the answer from {url} was blocked by its content filter")
    usage = completion.get("usage") or {}
    text = message.get("content")
    if not isinstance(text, str):
        raise Malformed("answer has no text content")
    return RawAnswer(
        text=text,
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
    )


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
        from .batch import submit_batch

        return submit_batch(self, requests, metadata=metadata)

    def collect_batch(
        self, batch_id: str, *, requests: Any = None, poll_interval_s: float = 30.0, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Wait for a batch; ``{custom_id: ChatResult | ProviderError}`` (see batch.collect_batch)."""
        from .batch import collect_batch

        return collect_batch(self, batch_id, requests=requests, poll_interval_s=poll_interval_s, timeout_s=timeout_s)

    def batch_status(self, batch_id: str) -> str:
        from .batch import batch_status

        return batch_status(self, batch_id)

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

