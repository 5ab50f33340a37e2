"""DSDPromptEnhance: DSD's caption-then-merge prompt enhancement as a ComfyUI node.

A VLM captions the reference, an LLM rewrites the user's prompt with the subject's details
(``dsd.enhance``, docs/method.md §2). API keys are read at execution time from the environment
or from the pack's key store (``nodes/keys.py``), never from a widget: a widget value would be
saved into the workflow JSON and into every PNG the graph writes.

Any client of the server can queue a graph, so base_url is client input: the server's keys go
only to the provider's official endpoint, another endpoint gets the key its owner registered
for it or none (``dsd.providers.endpoints``), and ``DSD_ALLOWED_BASE_URLS`` can limit where
requests go at all. Both are checked before any request.

Re-running a graph costs nothing: ComfyUI's own output cache keys on the widget values
(``fingerprint_inputs``) and the upstream image; behind it an in-memory LRU keyed by
(image hash, prompt, provider, model, endpoint) and the providers' on-disk answer cache
survive cache eviction and restarts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from comfy_api.latest import io

from ..dsd.enhance import DEFAULT_MODELS, MAX_USER_PROMPT_CHARS
from ..dsd.providers import endpoints
from . import keys
from .errors import require_finite

logger = logging.getLogger(__name__)

PROVIDER_GEMINI = "gemini"
PROVIDER_OPENAI = "openai-compatible"
PROVIDER_CHOICES = [PROVIDER_GEMINI, PROVIDER_OPENAI]
# What each combo entry means to dsd.providers, and the SDK it needs.
_PROVIDER_KIND = {PROVIDER_GEMINI: "gemini", PROVIDER_OPENAI: "openai"}
_SDK_HINT = {
    "gemini": ("google-genai", "google.genai"),
    "openai": ("openai", "openai"),
}
# Used when the model widget is left empty.
DEFAULT_MODEL = DEFAULT_MODELS["gemini"]

# A node must fail with a message, not hang the queue: bounded attempts and time per attempt.
TIMEOUT_S = 60.0
MAX_RETRIES = 3
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
MEMORY_CACHE_SIZE = 256


class PromptEnhanceError(RuntimeError):
    """The node cannot run as configured (missing SDK, missing key, empty prompt, provider failure)."""


# -- caches -------------------------------------------------------------------------------------
class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple[str, str] | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: tuple[str, str]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


RESULTS = _LRU(MEMORY_CACHE_SIZE)


def clear_caches() -> None:
    """Forget in-memory answers (the disk cache stays)."""
    RESULTS.clear()


def cache_directory() -> Path:
    """Disk cache of LLM answers: a ComfyUI *system* user folder, never served over HTTP."""
    import folder_paths

    return Path(folder_paths.get_system_user_directory("dsd")) / "llm_cache"


# -- API keys -----------------------------------------------------------------------------------
def api_key(kind: str, base_url: str | None = None) -> str | None:
    """The key that may go to ``base_url`` (see ``keys.resolve_key``); read at every execution, never cached."""
    try:
        return keys.resolve_key(kind, base_url)
    except (keys.KeyStoreError, endpoints.EndpointError) as exc:
        raise PromptEnhanceError(f"DSDPromptEnhance: {exc}") from None


def _key_hint(kind: str, endpoint: str, sent: bool) -> str:
    if sent and not endpoints.is_official(kind, endpoint):
        return (f"the key the server's owner registered for {endpoint} was refused there; the owner replaces it "
                f"({endpoints.ENDPOINT_KEYS_ENV} or POST /dsd/keys/set {{\"endpoint\": ..., \"key\": ...}})")
    if not endpoints.is_official(kind, endpoint):
        return (f"the server's {kind} key goes only to {endpoints.OFFICIAL_ENDPOINTS[kind]}; if {endpoint} needs "
                f"a key, the server's owner registers one for exactly that endpoint ({endpoints.ENDPOINT_KEYS_ENV} "
                f'or POST /dsd/keys/set {{"endpoint": ..., "key": ...}}, see the README)')
    names = " or ".join(keys.KEY_ENV_VARS[kind])
    return (f"set the environment variable {names} before starting ComfyUI, or enter the key in "
            f"{keys.UI_HINT} (kept on the server outside every folder ComfyUI serves, never in settings "
            "or workflows)")


def check_endpoint(kind: str, base_url: str | None) -> str:
    """The normalised endpoint for ``base_url``; an input error for a malformed or not allowed one."""
    try:
        endpoint = endpoints.endpoint_for(kind, base_url)
        endpoints.check_allowed(kind, endpoint)
    except endpoints.EndpointError as exc:
        raise PromptEnhanceError(f"DSDPromptEnhance: {exc}") from None
    return endpoint


# -- providers ----------------------------------------------------------------------------------
def _import_providers() -> Any:
    from ..dsd import providers

    return providers


def make_provider(kind: str, model: str, base_url: str | None, key: str | None) -> Any:
    """A provider for one execution, with the key ``api_key`` picked for its endpoint (None: none)."""
    providers = _import_providers()
    config = providers.ProviderConfig(
        kind=kind, model=model, base_url=base_url, timeout_s=TIMEOUT_S, max_retries=MAX_RETRIES,
        max_concurrency=2, cache_dir=str(cache_directory()), backoff_base_s=BACKOFF_BASE_S,
        backoff_max_s=BACKOFF_MAX_S,
    )
    try:
        # None: no key for this endpoint (the provider's own lookup, by the same rule, finds none
        # either, or names the variable to set for the official endpoint).
        return providers.make_provider(config, api_key=key)
    except ImportError as exc:
        package, module = _SDK_HINT[kind]
        raise PromptEnhanceError(
            f"DSDPromptEnhance needs the {package!r} package for the {kind} provider ({module} "
            f"failed to import: {exc.name or exc}); install it into ComfyUI's Python: "
            f"python -m pip install {package}"
        ) from None


class _ProgressProvider:
    """Forwards ``acomplete`` to a provider and advances ComfyUI's progress bar once per call."""

    def __init__(self, provider: Any, progress: Any) -> None:
        self._provider = provider
        self._progress = progress

    async def acomplete(self, request: Any) -> Any:
        result = await self._provider.acomplete(request)
        self._progress.update(1)
        return result

    def __repr__(self) -> str:
        return repr(self._provider)


# -- the node -----------------------------------------------------------------------------------
def reference_to_pil(image: Any) -> Any:
    """First image of a ComfyUI IMAGE batch as PIL RGB (the caption describes one reference)."""
    from ..dsd.canvas import tensor_to_pil, to_rgb01

    if image.ndim == 4 and image.shape[0] > 1:
        logger.info("DSDPromptEnhance: captioning the first of %d reference images", image.shape[0])
    require_finite("DSDPromptEnhance", image=image[:1])
    return tensor_to_pil(to_rgb01(image[:1], channels_last=True))


def image_digest(pil_image: Any) -> str:
    h = hashlib.sha256(f"{pil_image.size[0]}x{pil_image.size[1]}:{pil_image.mode}".encode())
    h.update(pil_image.tobytes())
    return h.hexdigest()


def _normalise(provider: str, model: str, base_url: str) -> tuple[str, str, str | None]:
    if provider not in _PROVIDER_KIND:
        raise PromptEnhanceError(f"DSDPromptEnhance: unknown provider {provider!r}; choose one of {PROVIDER_CHOICES}")
    kind = _PROVIDER_KIND[provider]
    return kind, (model or "").strip() or DEFAULT_MODELS[kind], (base_url or "").strip() or None


async def enhance(image: Any, prompt: str, provider: str, model: str, base_url: str = "",
                  node_id: str | None = None) -> tuple[str, str]:
    """(enhanced prompt, caption) for a ComfyUI IMAGE; memory LRU, then provider (+ disk cache)."""
    import comfy.utils

    from ..dsd.enhance import aenhance_prompt

    if not prompt.strip():
        raise PromptEnhanceError(
            "DSDPromptEnhance: the prompt is empty; write what the subject should do, or set enabled to false"
        )
    if len(prompt) > MAX_USER_PROMPT_CHARS:
        raise PromptEnhanceError(
            f"DSDPromptEnhance: the prompt is {len(prompt):,} characters long; the limit is "
            f"{MAX_USER_PROMPT_CHARS:,} (the enhanced prompt is one line of at most 77 tokens): shorten it"
        )
    kind, model, base_url = _normalise(provider, model, base_url)
    endpoint = check_endpoint(kind, base_url)
    pil = reference_to_pil(image)
    key = (image_digest(pil), prompt, kind, model, endpoint)
    progress = comfy.utils.ProgressBar(2, node_id=node_id)
    hit = RESULTS.get(key)
    if hit is not None:
        progress.update_absolute(2)
        return hit
    sent_key = api_key(kind, base_url)
    llm = make_provider(kind, model, base_url, sent_key)
    providers = _import_providers()
    try:
        result = await aenhance_prompt(_ProgressProvider(llm, progress), pil, prompt)
    except providers.ProviderAuthError as exc:
        raise PromptEnhanceError(f"DSDPromptEnhance ({kind}, {model}): {exc}; {_key_hint(kind, endpoint, sent_key is not None)}") from None
    except providers.ProviderError as exc:
        raise PromptEnhanceError(
            f"DSDPromptEnhance ({kind}, {model}): {exc}. To generate without enhancement set enabled to false."
        ) from None
    finally:
        await llm.aclose()
    logger.info("DSDPromptEnhance: %d request(s), %d cached, %d retries", result.usage.requests,
                result.usage.cached, result.usage.retries)
    value = (result.prompt, result.caption)
    RESULTS.put(key, value)
    return value


class DSDPromptEnhance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSDPromptEnhance",
            display_name="DSD Prompt Enhance (LLM)",
            category="DSD/prompt",
            description=(
                "DSD prompt enhancement: a VLM captions the reference, then an LLM rewrites your prompt with "
                "the subject's details (one line, <= 77 tokens). API keys come from the environment "
                "(OPENAI_API_KEY, GEMINI_API_KEY / GOOGLE_API_KEY) or from Settings > DSD, which keeps "
                "them on the server and never in settings files or the workflow; they go only to the "
                "provider's official API. Answers are cached."
            ),
            # base_url is last: optional inputs follow the required ones in ComfyUI's widget order.
            inputs=[
                io.Image.Input("image", tooltip="The reference image whose subject the prompt should describe "
                               "(the first image of a batch is captioned)."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="Your prompt: what the subject should do and where. Everything you "
                                "write is kept; the subject's appearance is filled in from the reference. "
                                f"At most {MAX_USER_PROMPT_CHARS:,} characters."),
                io.Combo.Input("provider", options=PROVIDER_CHOICES, default=PROVIDER_GEMINI,
                               tooltip="gemini: Google's Gemini API (google-genai SDK, key in GEMINI_API_KEY). "
                               "openai-compatible: OpenAI or any OpenAI-compatible server such as vLLM, "
                               "Ollama or LM Studio (openai SDK, key in OPENAI_API_KEY; local servers need none)."),
                io.String.Input("model", default=DEFAULT_MODEL,
                                tooltip="Model name, e.g. gemini-2.5-flash, gpt-4o-mini, or a local vision model "
                                "such as qwen2.5vl:7b (Ollama). Empty: gemini-2.5-flash / gpt-4o-mini. "
                                "It must accept images."),
                io.Boolean.Input("enabled", default=True,
                                 tooltip="Off: the prompt passes through unchanged and no request is made."),
                io.String.Input("base_url", default="", optional=True,
                                tooltip="Optional http(s) server URL. Empty: the provider's public API, the only "
                                "place the server's keys go. For a local OpenAI-compatible server e.g. "
                                "http://127.0.0.1:11434/v1 (Ollama), http://127.0.0.1:8000/v1 (vLLM), "
                                "http://127.0.0.1:1234/v1 (LM Studio); it is called without a key unless the "
                                "server's owner registered one for exactly this URL."),
            ],
            outputs=[
                io.String.Output("enhanced_prompt", display_name="prompt",
                                 tooltip="The enhanced prompt (or the input prompt when disabled)."),
                io.String.Output("caption", tooltip="The VLM's caption of the reference (empty when disabled)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, prompt: str = "", provider: str = PROVIDER_GEMINI, model: str = DEFAULT_MODEL,
                           base_url: str = "", enabled: bool = True, **_: Any) -> str:
        # Widget values only (linked inputs arrive as None here); ComfyUI adds the image's own
        # upstream signature. The API key is deliberately not part of it.
        return json.dumps([prompt, provider, model, base_url or "", bool(enabled)])

    @classmethod
    async def execute(cls, image: Any, prompt: str, provider: str, model: str, base_url: str = "",
                      enabled: bool = True) -> io.NodeOutput:
        if not enabled:
            return io.NodeOutput(prompt, "")
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        enhanced, caption = await enhance(image, prompt, provider, model, base_url or "", node_id=node_id)
        return io.NodeOutput(enhanced, caption)


NODES: list[type[io.ComfyNode]] = [DSDPromptEnhance]
