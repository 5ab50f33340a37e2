"""Retry policy: exponential backoff with full jitter, honouring server-sent ``retry-after``.

Providers translate SDK exceptions into the small vocabulary below; :func:`run_with_retries`
decides what to do with it. Keeping the policy here means OpenAI and Gemini behave alike.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from .errors import ProviderResponseError, ProviderUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A server asking us to wait longer than this is treated as "unavailable for now" rather than
# blocking a datagen worker for minutes on one request.
MAX_RETRY_AFTER_S = 120.0


class Transient(Exception):
    """A failure worth retrying (429, 5xx, timeout, connection error)."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Malformed(Exception):
    """The answer arrived but could not be used (bad JSON, schema mismatch): retried a few times."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def no_connection(timeout_s: float) -> str:
    """The reason given for every network failure and timeout alike (see the providers' translators)."""
    return f"could not connect, or no answer within {timeout_s:g}s"


def status_text(code: int | None, detail: str) -> str:
    """``HTTP 503`` or ``HTTP 503: <provider's JSON message>``."""
    return f"HTTP {code}: {detail}" if detail else f"HTTP {code}"


def retry_after_from_headers(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds); None when absent/invalid."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        if "retry-after-ms" in lower:
            return max(0.0, float(lower["retry-after-ms"]) / 1000.0)
        if "retry-after" in lower:
            return max(0.0, float(lower["retry-after"]))
    except (TypeError, ValueError):
        return None  # HTTP-date form: fall back to our own backoff
    return None


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Full jitter (AWS architecture blog): uniform over [0, min(max, base * 2**attempt)]."""
    return random.uniform(0.0, min(max_s, base_s * (2**attempt)))


async def run_with_retries(
    attempt_fn: Callable[[], Awaitable[T]],
    *,
    url: str,
    max_retries: int,
    max_malformed_retries: int,
    backoff_base_s: float,
    backoff_max_s: float,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """Run ``attempt_fn`` until it succeeds; raise ProviderUnavailable / ProviderResponseError.

    Any exception other than :class:`Transient` / :class:`Malformed` (auth, refusal, 400)
    propagates at once: retrying cannot fix it.
    """
    transient_tries = 0
    malformed_tries = 0
    while True:
        try:
            return await attempt_fn()
        except Transient as exc:
            transient_tries += 1
            if transient_tries > max_retries:
                raise ProviderUnavailable(
                    f"{url} failed after {transient_tries} tries (last error: {exc.reason}); "
                    "check that the server is running and reachable, or raise max_retries / timeout_s"
                ) from None
            if exc.retry_after_s is not None:
                delay = min(exc.retry_after_s, MAX_RETRY_AFTER_S)
            else:
                delay = backoff_delay(transient_tries - 1, backoff_base_s, backoff_max_s)
            logger.info("retrying %s in %.2fs (try %d/%d): %s", url, delay, transient_tries + 1,
                        max_retries + 1, exc.reason)
        except Malformed as exc:
            malformed_tries += 1
            if malformed_tries > max_malformed_retries:
                raise ProviderResponseError(
                    f"{url} returned an unusable answer {malformed_tries} times: {exc.reason}; "
                    "use a model that supports structured output or simplify the schema"
                ) from None
            delay = 0.0
            logger.info("retrying %s after a malformed answer (%s)", url, exc.reason)
        if on_retry is not None:
            on_retry()
        if delay > 0:
            await asyncio.sleep(delay)
