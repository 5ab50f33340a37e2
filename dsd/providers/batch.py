"""OpenAI Batch API for big offline runs (datagen): 50 % price, answers within 24 h.

``submit_batch`` writes the JSONL of chat-completion bodies, uploads it with
``files.create(purpose="batch")`` and starts ``batches.create``; ``collect_batch`` polls
``batches.retrieve`` and turns each output line into a ChatResult or a ProviderError, exactly
like an online call would (same parsing, same refusal and schema checks).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .config import ProviderConfig
from .errors import (
    ProviderAuthError,
    ProviderError,
    ProviderResponseError,
    ProviderUnavailable,
)
from .openai_wire import parse_completion
from .retry import Malformed, run_with_retries
from .schema import SchemaMismatch, parse_json_answer
from .types import ChatRequest, ChatResult, Usage

logger = logging.getLogger(__name__)

BATCH_ENDPOINT = "/v1/chat/completions"
BATCH_PRICE_FACTOR = 0.5  # the Batch API bills half the online price
_FINAL_STATES = {"completed", "failed", "expired", "cancelled"}

BatchRequests = Sequence[ChatRequest] | Mapping[str, ChatRequest]


class BatchProvider(Protocol):
    """What the Batch API needs of a provider (``BatchProvider`` has it all, through public methods)."""

    config: ProviderConfig

    def build_body(self, request: ChatRequest) -> dict[str, Any]: ...
    def translate_error(self, exc: BaseException) -> BaseException: ...
    def run_blocking(self, coro: Any) -> Any: ...
    def sdk_client(self) -> Any: ...
    def record_answer(self, request: ChatRequest | None, text: str, data: dict | None, usage: Usage) -> None: ...


def _items(requests: BatchRequests) -> list[tuple[str, ChatRequest]]:
    if isinstance(requests, Mapping):
        return [(str(k), v) for k, v in requests.items()]
    return [(str(i), r) for i, r in enumerate(requests)]


def batch_jsonl(provider: BatchProvider, requests: BatchRequests) -> bytes:
    """The Batch API input file: one ``{"custom_id", "method", "url", "body"}`` line per request."""
    lines = [
        json.dumps({"custom_id": cid, "method": "POST", "url": BATCH_ENDPOINT, "body": provider.build_body(r)})
        for cid, r in _items(requests)
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


async def _call(provider: BatchProvider, what: str, fn: Any) -> Any:
    async def attempt() -> Any:
        try:
            return await fn(provider.sdk_client())
        except Exception as exc:  # noqa: BLE001 - translated below
            raise provider.translate_error(exc) from None

    return await run_with_retries(
        attempt,
        url=f"{(provider.config.base_url or 'https://api.openai.com/v1').rstrip('/')}/{what}",
        max_retries=provider.config.max_retries,
        max_malformed_retries=provider.config.max_malformed_retries,
        backoff_base_s=provider.config.backoff_base_s,
        backoff_max_s=provider.config.backoff_max_s,
    )


def submit_batch(provider: BatchProvider, requests: BatchRequests, *, metadata: dict[str, str] | None = None) -> str:
    """Upload and start a batch; returns the batch id. custom_ids are the indices (or mapping keys)."""
    if not requests:
        raise ValueError("submit_batch needs at least one request")
    payload = batch_jsonl(provider, requests)

    async def go() -> str:
        uploaded = await _call(
            provider, "files", lambda c: c.files.create(file=("batch.jsonl", payload), purpose="batch")
        )
        batch = await _call(
            provider,
            "batches",
            lambda c: c.batches.create(
                input_file_id=uploaded.id,
                endpoint=BATCH_ENDPOINT,
                completion_window="24h",
                metadata=metadata,
            ),
        )
        return batch.id

    batch_id = provider.run_blocking(go())
    logger.info("submitted batch %s with %d requests", batch_id, len(requests))
    return batch_id


def batch_status(provider: BatchProvider, batch_id: str) -> str:
    batch = provider.run_blocking(_call(provider, "batches", lambda c: c.batches.retrieve(batch_id)))
    return batch.status


def collect_batch(
    provider: BatchProvider,
    batch_id: str,
    *,
    requests: BatchRequests | None = None,
    poll_interval_s: float = 30.0,
    timeout_s: float | None = None,
) -> dict[str, ChatResult | ProviderError]:
    """Wait for the batch and return ``{custom_id: ChatResult | ProviderError}``.

    Pass the submitted ``requests`` to validate structured answers against their schemas and
    store the answers in the provider's cache; without them JSON objects are parsed unchecked.
    """
    by_id = dict(_items(requests)) if requests is not None else {}

    async def go() -> dict[str, ChatResult | ProviderError]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            batch = await _call(provider, "batches", lambda c: c.batches.retrieve(batch_id))
            if batch.status in _FINAL_STATES:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise ProviderUnavailable(
                    f"batch {batch_id} is still {batch.status!r} after {timeout_s:g}s; "
                    "call collect_batch again later (the batch keeps running server-side)"
                )
            await asyncio.sleep(poll_interval_s)
        if batch.status != "completed" and not batch.output_file_id:
            raise ProviderUnavailable(f"batch {batch_id} ended as {batch.status!r} without output: {batch.errors}")
        results: dict[str, ChatResult | ProviderError] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await _call(provider, "files", lambda c, f=file_id: c.files.content(f))
            for line in content.text.splitlines():
                if line.strip():
                    entry = json.loads(line)
                    cid = str(entry.get("custom_id"))
                    results[cid] = _line_result(provider, entry, by_id.get(cid))
        return results

    return provider.run_blocking(go())


def _line_result(provider: BatchProvider, entry: dict[str, Any], request: ChatRequest | None) -> ChatResult | ProviderError:
    url = f"batch line {entry.get('custom_id')!r}"
    if entry.get("error"):
        return ProviderError(f"{url} failed: {entry['error']}")
    response = entry.get("response") or {}
    status = int(response.get("status_code") or 0)
    body = response.get("body") or {}
    if status in (401, 403):
        return ProviderAuthError(f"{url}: key rejected (HTTP {status}); set {' or '.join(provider.config.key_env_names())}")
    if status != 200:
        message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
        return ProviderError(f"{url} failed with HTTP {status}: {message}")
    try:
        raw = parse_completion(body, url)
    except Malformed as exc:
        return ProviderResponseError(f"{url}: {exc.reason}")
    except ProviderError as exc:
        return exc
    data: dict | None = None
    try:
        if request is not None and request.json_schema is not None:
            data = parse_json_answer(raw.text, request.json_schema)
        elif raw.text.lstrip().startswith("{"):
            parsed = json.loads(raw.text)
            data = parsed if isinstance(parsed, dict) else None
    except (SchemaMismatch, json.JSONDecodeError) as exc:
        return ProviderResponseError(f"{url}: {exc}")
    cost = provider.config.cost_usd(raw.input_tokens, raw.output_tokens) * BATCH_PRICE_FACTOR
    usage = Usage(requests=1, input_tokens=raw.input_tokens, output_tokens=raw.output_tokens, cost_usd=cost)
    provider.record_answer(request, raw.text, data, usage)
    return ChatResult(text=raw.text, data=data, usage=usage, cached=False)


__all__ = ["batch_jsonl", "batch_status", "collect_batch", "submit_batch"]
