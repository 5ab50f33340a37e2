"""The provider interface: sync + async completion, bounded-concurrency map, cache, usage.

Each provider speaks through its SDK's *async* client only. The sync entry points
(:meth:`Provider.complete`, :meth:`Provider.map`, the batch calls) run on one private event
loop in a daemon thread, so they work the same from a plain script, a ComfyUI worker thread
or a thread that already runs its own loop. SDK clients are bound to an event loop, hence one
client per loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from .cache import AnswerCache, request_cache_key
from .config import ProviderConfig
from .endpoints import ENDPOINT_KEYS_ENV, OFFICIAL_ENDPOINTS, registered_key_variable
from .errors import ProviderAuthError, ProviderError
from .retry import Malformed, Transient, run_with_retries
from .schema import SchemaMismatch, parse_json_answer
from .types import ChatRequest, ChatResult, Usage, UsageCounter

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Extra wall-clock allowance over the SDK's own timeout before we give up on an attempt
# ourselves: a guard against a client that never times out, so nothing can hang.
_GUARD_S = 5.0
# Threads of the private loop's default executor (see _LoopThread).
_EXECUTOR_THREADS = 64


@dataclass
class RawAnswer:
    """What one successful HTTP exchange produced, before JSON parsing."""

    text: str
    input_tokens: int
    output_tokens: int


class _LoopThread:
    """A private event loop in a daemon thread for the sync API."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        # asyncio's default executor has min(32, cpus + 4) threads: 6 on a 2-core host. The SDKs hop
        # through it on every request (aiohttp looks up proxy/netrc settings in a thread; our cache
        # write too), so with dozens of requests in flight those hops queued and throughput fell
        # below the concurrency the caller asked for. Threads are started lazily, only when needed.
        self.loop.set_default_executor(ThreadPoolExecutor(max_workers=_EXECUTOR_THREADS, thread_name_prefix=f"{name}-io"))
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("Provider sync API called from its own event loop; use `await acomplete()`")
        return self.submit(coro).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class Provider(ABC):
    """An LLM/VLM endpoint. Thread-safe; use one instance per config and share it."""

    def __init__(self, config: ProviderConfig, api_key: str | None = None) -> None:
        """``api_key``: a key held in memory for ``config``'s endpoint (e.g. from the ComfyUI key store);
        default: ``config.resolve_api_key()`` (the environment, by the endpoint rule there)."""
        self.config = config
        self._counter = UsageCounter()
        self._cache = AnswerCache(config.cache_dir) if config.cache_dir else None
        self._lock = threading.Lock()
        self._loop_thread: _LoopThread | None = None
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self._api_key: str | None = api_key or None
        self._key_resolved = self._api_key is not None

    # -- what a concrete provider supplies -------------------------------------------------
    @property
    @abstractmethod
    def endpoint_url(self) -> str:
        """The URL named in error messages."""

    @abstractmethod
    def _make_client(self, api_key: str | None) -> Any:
        """A new SDK async client (called once per event loop); ``api_key`` None: send no key."""

    @abstractmethod
    async def _send(self, client: Any, request: ChatRequest) -> RawAnswer:
        """One HTTP exchange. Raise Transient / Malformed / a ProviderError subclass."""

    async def _close_client(self, client: Any) -> None:
        close = getattr(client, "close", None)
        if close is not None:
            await close()

    # -- public API ------------------------------------------------------------------------
    @property
    def usage(self) -> Usage:
        """Running totals over every call so far (a snapshot copy)."""
        return self._counter.snapshot()

    def cache_key(self, request: ChatRequest) -> str:
        return request_cache_key(self.config, request)

    def complete(self, request: ChatRequest) -> ChatResult:
        """Answer one request (blocking). Raises a :class:`ProviderError` subclass on failure."""
        return self._background().run(self.acomplete(request))

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        """Answer one request; at most ``config.max_concurrency`` run at once per event loop."""
        async with self._semaphore():
            return await self._complete_one(request)

    def map(
        self,
        requests: Iterable[ChatRequest],
        *,
        concurrency: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Iterator[tuple[int, ChatResult | ProviderError]]:
        """Answer many requests with at most ``concurrency`` (default ``max_concurrency``) in flight.

        Yields ``(index, result_or_error)`` in completion order; a failed item yields its
        ProviderError instead of raising. ``progress(done, total)`` is called in the consuming
        thread. Abandoning the iterator cancels the requests still pending.
        """
        items: Sequence[ChatRequest] = requests if isinstance(requests, Sequence) else list(requests)
        total = len(items)
        workers = max(1, min(concurrency or self.config.max_concurrency, max(total, 1)))
        out: queue.Queue[tuple[int, ChatResult | ProviderError]] = queue.Queue()

        async def worker(it: Iterator[tuple[int, ChatRequest]]) -> None:
            for index, request in it:  # one shared iterator: each item is taken exactly once
                try:
                    result: ChatResult | ProviderError = await self._complete_one(request)
                except ProviderError as exc:
                    result = exc
                except Exception as exc:  # noqa: BLE001 - per-item failures must not stop the run
                    logger.exception("request %d failed unexpectedly", index)
                    result = ProviderError(f"request {index} failed unexpectedly: {type(exc).__name__}: {exc}")
                out.put((index, result))

        async def run_all() -> None:
            it = iter(enumerate(items))
            await asyncio.gather(*(worker(it) for _ in range(workers)))

        future = self._background().submit(run_all())
        try:
            for done in range(1, total + 1):
                while True:
                    try:
                        item = out.get(timeout=0.5)
                        break
                    except queue.Empty:
                        if future.done() and future.exception() is not None:
                            raise future.exception() from None  # type: ignore[misc]
                if progress is not None:
                    progress(done, total)
                yield item
        finally:
            future.cancel()

    def submit_batch(self, requests: Any, *, metadata: dict[str, str] | None = None) -> str:
        raise ProviderError(
            f"the Batch API is only available with kind='openai' (this provider is {self.config.kind!r}); "
            "use map() instead"
        )

    def close(self) -> None:
        """Close the SDK clients of the private loop and stop it (optional; daemon thread otherwise)."""
        with self._lock:
            loop_thread, self._loop_thread = self._loop_thread, None
        if loop_thread is None:
            return
        client = self._clients.pop(loop_thread.loop, None)
        if client is not None:
            try:
                loop_thread.run(self._close_client(client))
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                logger.debug("closing %s client: %s", self.config.kind, exc)
        loop_thread.stop()

    async def aclose(self) -> None:
        """Close the SDK client bound to the running event loop (the async counterpart of :meth:`close`).

        For callers that drive :meth:`acomplete` on a loop of their own (ComfyUI runs each prompt on
        a fresh loop): a client outliving its loop would hold a dead connection pool.
        """
        with self._lock:
            client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await self._close_client(client)

    # -- for callers outside the request path (the OpenAI Batch API) ------------------------
    def run_blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this provider's private event loop and wait for it."""
        return self._background().run(coro)

    def sdk_client(self) -> Any:
        """The SDK client bound to the running event loop (made on first use)."""
        return self._client()

    def record_answer(self, request: ChatRequest | None, text: str, data: dict | None, usage: Usage) -> None:
        """Count an answer obtained outside :meth:`acomplete` and cache it like an online one."""
        self._counter.add(usage)
        if request is not None and self._cache is not None:
            self._cache.put(self.cache_key(request), text, data, usage.input_tokens, usage.output_tokens)

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.config.model!r}, url={self.endpoint_url!r})"

    # -- machinery -------------------------------------------------------------------------
    def _background(self) -> _LoopThread:
        with self._lock:
            if self._loop_thread is None:
                self._loop_thread = _LoopThread(f"dsd-provider-{self.config.kind}")
            return self._loop_thread

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._semaphores.get(loop)
            if sem is None:
                sem = self._semaphores[loop] = asyncio.Semaphore(self.config.max_concurrency)
            return sem

    def api_key(self) -> str | None:
        """The key, resolved lazily (cached answers need none); None: this endpoint gets no key. Never log it."""
        if not self._key_resolved:
            self._api_key = self.config.resolve_api_key()
            self._key_resolved = True
        return self._api_key

    def auth_error(self, status: int | None) -> ProviderAuthError:
        """The endpoint refused us: a wrong key, or none sent because the endpoint has none registered."""
        url = self.endpoint_url
        if self._api_key is None:
            official = OFFICIAL_ENDPOINTS[self.config.kind]
            return ProviderAuthError(
                f"{url} answered HTTP {status} and no API key was sent: the server's {self.config.kind} keys go "
                f"only to {official}, and no key is registered for the endpoint {self.config.endpoint} "
                f"(register one with {ENDPOINT_KEYS_ENV}, see the README's API keys section)"
            )
        return ProviderAuthError(f"{url} rejected the API key (HTTP {status}); {self._key_source_hint()}")

    def _key_source_hint(self) -> str:
        """Where the key sent came from, as far as the config tells (a key passed in memory: its caller says)."""
        config = self.config
        variable = config.api_key_env or registered_key_variable(config.endpoint)
        if variable is None and config.is_official:
            variable = " or ".join(config.key_env_names())
        return f"set a valid key in the environment variable {variable}" if variable else "set a valid key"

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None:
                client = self._clients[loop] = self._make_client(self.api_key())
            return client

    async def _complete_one(self, request: ChatRequest) -> ChatResult:
        key = None
        if self._cache is not None:
            key = self.cache_key(request)
            entry = self._cache.get(key)
            if entry is not None:
                usage = Usage(cached=1)
                self._counter.add(usage)
                return ChatResult(text=entry["text"], data=entry.get("data"), usage=usage, cached=True)

        usage = Usage()
        client = self._client()

        async def attempt() -> tuple[str, dict | None]:
            usage.requests += 1
            try:
                raw = await asyncio.wait_for(self._send(client, request), self.config.timeout_s + _GUARD_S)
            except asyncio.TimeoutError:
                raise Transient(f"no answer within {self.config.timeout_s + _GUARD_S:.0f}s") from None
            usage.input_tokens += raw.input_tokens
            usage.output_tokens += raw.output_tokens
            if request.json_schema is None:
                if not raw.text.strip():
                    raise Malformed("empty answer")
                return raw.text, None
            try:
                return raw.text, parse_json_answer(raw.text, request.json_schema)
            except SchemaMismatch as exc:
                raise Malformed(str(exc)) from None

        def on_retry() -> None:
            usage.retries += 1

        try:
            text, data = await run_with_retries(
                attempt,
                url=self.endpoint_url,
                max_retries=self.config.max_retries,
                max_malformed_retries=self.config.max_malformed_retries,
                backoff_base_s=self.config.backoff_base_s,
                backoff_max_s=self.config.backoff_max_s,
                on_retry=on_retry,
            )
        finally:
            # Failed attempts still cost tokens and count as requests.
            usage.cost_usd = self.config.cost_usd(usage.input_tokens, usage.output_tokens)
            self._counter.add(usage)
        if self._cache is not None and key is not None:
            # an fsync'ed write must not stall the event loop that carries every request in flight
            await asyncio.to_thread(self._cache.put, key, text, data, usage.input_tokens, usage.output_tokens)
        return ChatResult(text=text, data=data, usage=usage, cached=False)

