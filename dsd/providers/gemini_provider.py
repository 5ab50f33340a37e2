"""Gemini ``generateContent`` via the official google-genai SDK."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gt

from .base import Provider, RawAnswer
from .endpoints import NO_KEY, OFFICIAL_ENDPOINTS
from .errors import ProviderError, ProviderRefusal, redact
from .retry import Malformed, Transient, no_connection, retry_after_from_headers, status_text
from .types import ChatRequest, image_mime_type

GEMINI_DEFAULT_URL = OFFICIAL_ENDPOINTS["gemini"]
GEMINI_API_VERSION = "v1beta"
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_REFUSAL_REASONS = {
    "SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT",
    "RECITATION", "JAILBREAK", "MODEL_ARMOR",
}

try:  # the SDK uses aiohttp when installed, httpx otherwise
    import aiohttp

    _NETWORK_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError,)
except ImportError:  # pragma: no cover - depends on the environment
    _NETWORK_ERRORS = ()
try:
    import httpx2

    _NETWORK_ERRORS += (httpx2.TransportError,)
except ImportError:  # pragma: no cover
    pass
_NETWORK_ERRORS += (OSError,)


def _enum_name(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value)).upper()


class GeminiProvider(Provider):
    @property
    def endpoint_url(self) -> str:
        base = (self.config.base_url or GEMINI_DEFAULT_URL).rstrip("/")
        return f"{base}/{GEMINI_API_VERSION}/models/{self.config.model}:generateContent"

    def _make_client(self, api_key: str | None) -> genai.Client:
        options = gt.HttpOptions(
            # Explicit, so no environment variable can redirect the key elsewhere.
            base_url=self.config.base_url or GEMINI_DEFAULT_URL,
            # Pinned so the URL in error messages is the one called; v1beta carries responseJsonSchema.
            api_version=GEMINI_API_VERSION,
            timeout=int(self.config.timeout_s * 1000),  # milliseconds
            # attempts=1 turns off the SDK's own retries, including its implicit
            # 1-10 s sleep after a connection error: retries are ours.
            retry_options=gt.HttpRetryOptions(attempts=1),
        )
        # vertexai=False: GOOGLE_GENAI_USE_VERTEXAI must not switch the client to Google Cloud credentials.
        return genai.Client(vertexai=False, api_key=api_key or NO_KEY, http_options=options)

    async def _close_client(self, client: genai.Client) -> None:
        await client.aio.aclose()

    def _contents(self, request: ChatRequest) -> list[gt.Content]:
        parts = [gt.Part.from_text(text=request.prompt)]
        parts += [gt.Part.from_bytes(data=img, mime_type=image_mime_type(img)) for img in request.images]
        earlier = [gt.Content(role="model" if role == "assistant" else "user", parts=[gt.Part.from_text(text=text)])
                   for role, text in request.history]  # fmt: skip
        return [*earlier, gt.Content(role="user", parts=parts)]

    def _generation_config(self, request: ChatRequest) -> gt.GenerateContentConfig:
        kwargs: dict[str, Any] = {
            "temperature": request.temperature,
            "max_output_tokens": request.max_output_tokens,
        }
        if request.system:
            kwargs["system_instruction"] = request.system
        if request.json_schema is not None:
            kwargs["response_mime_type"] = "application/json"
            kwargs["response_json_schema"] = request.json_schema
        return gt.GenerateContentConfig(**kwargs)

    async def _send(self, client: genai.Client, request: ChatRequest) -> RawAnswer:
        contents = self._contents(request)
        config = self._generation_config(request)
        try:
            response = await client.aio.models.generate_content(
                model=self.config.model, contents=contents, config=config
            )
        except genai_errors.APIError as exc:
            raise self._translate_api_error(exc) from None
        except (asyncio.TimeoutError, TimeoutError, *_NETWORK_ERRORS):
            # One text for refused, reset, non-HTTP and silent ports: errors must not map a network.
            raise Transient(no_connection(self.config.timeout_s)) from None
        except ValueError as exc:  # JSON decoding of the body inside the SDK
            raise Malformed(f"unparseable response body ({type(exc).__name__})") from None
        return self._parse(response)

    def _parse(self, response: gt.GenerateContentResponse) -> RawAnswer:
        url = self.endpoint_url
        feedback = response.prompt_feedback
        block = _enum_name(feedback.block_reason) if feedback is not None else None
        if block and block != "BLOCKED_REASON_UNSPECIFIED":
            raise ProviderRefusal(f"{url} blocked the prompt (block_reason={block})")
        if not response.candidates:
            raise Malformed("answer has no candidates")
        candidate = response.candidates[0]
        reason = _enum_name(candidate.finish_reason)
        if reason in _REFUSAL_REASONS:
            raise ProviderRefusal(f"{url} stopped the answer (finish_reason={reason})")
        parts = (candidate.content.parts if candidate.content else None) or []
        # Thinking models return thought parts first; only the answer parts count.
        text = "".join(p.text for p in parts if p.text and not p.thought)
        meta = response.usage_metadata
        return RawAnswer(
            text=text,
            input_tokens=int((meta.prompt_token_count if meta else 0) or 0),
            output_tokens=int((meta.candidates_token_count if meta else 0) or 0),
        )

    def _translate_api_error(self, exc: genai_errors.APIError) -> BaseException:
        url = self.endpoint_url
        error = _google_error(exc.details)
        detail = redact(str(error.get("message") or error.get("status") or ""), self._api_key)[:300]
        code = exc.code
        # Google answers a bad key with 400 INVALID_ARGUMENT "API key not valid" (API_KEY_INVALID).
        key_problem = code == 400 and ("API key" in detail or "API_KEY" in str(error))
        if code in (401, 403) or key_problem:
            return self.auth_error(code)
        if code in _RETRY_STATUS:
            headers = getattr(exc.response, "headers", None)
            retry_after = retry_after_from_headers(dict(headers) if headers is not None else None)
            if retry_after is None:
                retry_after = _retry_info_delay(exc.details)
            return Transient(status_text(code, detail), retry_after)
        return ProviderError(
            f"{url} rejected the request ({status_text(code, detail)}); "
            f"check the model name {self.config.model!r} and the request options"
        )


def _google_error(details: Any) -> dict:
    """The ``error`` object of a body in Google's JSON error format, else {}: the SDK wraps a non-JSON
    body (an HTML page of whatever server base_url named) as a message, which is never echoed."""
    error = details.get("error") if isinstance(details, dict) else None
    return error if isinstance(error, dict) else {}


def _retry_info_delay(details: Any) -> float | None:
    """google.rpc.RetryInfo ``retryDelay: "12s"`` inside the error body, which Gemini sends on 429."""
    error = details.get("error", details) if isinstance(details, dict) else None
    for item in (error or {}).get("details", []) if isinstance(error, dict) else []:
        delay = item.get("retryDelay") if isinstance(item, dict) else None
        if isinstance(delay, str):
            match = re.fullmatch(r"([0-9.]+)s", delay.strip())
            if match:
                return float(match.group(1))
    return None
