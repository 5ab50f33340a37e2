"""Gemini ``generateContent`` via the official google-genai SDK."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gt

from .base import Provider, RawAnswer
from .errors import ProviderAuthError, ProviderError, ProviderRefusal, redact
from .retry import Malformed, Transient, retry_after_from_headers
from .types import ChatRequest, image_mime_type

GEMINI_DEFAULT_URL = "https://generativelanguage.googleapis.com"
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

    def _make_client(self, api_key: str) -> genai.Client:
        options = gt.HttpOptions(
            base_url=self.config.base_url,
            # Pinned so the URL in error messages is the one called; v1beta carries responseJsonSchema.
            api_version=GEMINI_API_VERSION,
            timeout=int(self.config.timeout_s * 1000),  # milliseconds
            # attempts=1 turns off the SDK's own retries, including its implicit
            # 1-10 s sleep after a connection error: retries are ours.
            retry_options=gt.HttpRetryOptions(attempts=1),
        )
        return genai.Client(api_key=api_key, http_options=options)

    async def _close_client(self, client: genai.Client) -> None:
        await client.aio.aclose()

    def _contents(self, request: ChatRequest) -> list[gt.Content]:
        parts = [gt.Part.from_text(text=request.prompt)]
        parts += [gt.Part.from_bytes(data=img, mime_type=image_mime_type(img)) for img in request.images]
        return [gt.Content(role="user", parts=parts)]

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
        except (asyncio.TimeoutError, TimeoutError):
            raise Transient(f"timed out after {self.config.timeout_s:g}s") from None
        except _NETWORK_ERRORS as exc:
            raise Transient(f"connection failed ({type(exc).__name__}: {redact(str(exc), self._api_key)[:200]})") from None
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
        detail = redact(str(exc.message or exc.status or ""), self._api_key)[:300]
        code = exc.code
        # Google answers a bad key with 400 INVALID_ARGUMENT "API key not valid" (API_KEY_INVALID).
        key_problem = code == 400 and ("API key" in detail or "API_KEY" in str(exc.details))
        if code in (401, 403) or key_problem:
            names = " or ".join(self.config.key_env_names())
            return ProviderAuthError(
                f"{url} rejected the API key (HTTP {code}); set a valid key in the environment variable {names}"
            )
        if code in _RETRY_STATUS:
            headers = getattr(exc.response, "headers", None)
            retry_after = retry_after_from_headers(dict(headers) if headers is not None else None)
            if retry_after is None:
                retry_after = _retry_info_delay(exc.details)
            return Transient(f"HTTP {code}: {detail}", retry_after)
        return ProviderError(
            f"{url} rejected the request (HTTP {code}: {detail}); "
            f"check the model name {self.config.model!r} and the request options"
        )


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
