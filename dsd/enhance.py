"""DSD prompt enhancement (docs/method.md §2), shared by the ComfyUI node and the CLI.

Step 1: a VLM captions the reference image as a text-to-image prompt. Step 2: an LLM rewrites
the user's prompt, keeping everything the user asked for and filling in what the subject
looks like from the caption, so the diffusion model gets an identity-rich prompt. Both answers
are cleaned to one line of at most 77 CLIP tokens (the FLUX CLIP encoder's window).

Both calls are deterministic (temperature 0) and go through the provider's answer cache, so
the same image + prompt + provider + model costs nothing the second time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image

from .providers import ChatRequest, Provider, ProviderResponseError, Usage, image_to_png_bytes

MAX_PROMPT_TOKENS = 77
# The user's prompt is sent to the LLM inside the rewrite instruction; a cap keeps a pasted essay
# (or a client of a shared ComfyUI server) from sending unbounded text and paying for it.
MAX_USER_PROMPT_CHARS = 8000
# Models used when none is named (the authors used Gemini 1.5 Flash, since retired).
DEFAULT_MODELS = {"gemini": "gemini-2.5-flash", "openai": "gpt-4o-mini"}
# The reference is downscaled before upload: identity details survive, tokens and bytes drop.
CAPTION_IMAGE_MAX_SIDE = 768

CAPTION_INSTRUCTION = (
    "Write a prompt for a text-to-image model that would reproduce this image. Describe the main "
    "subject in detail (what it is, its distinctive colours, shapes, clothing, materials, markings), "
    "then the environment, the pose, the lighting, the camera view and the style. "
    "Answer with the prompt only: one line, at most 77 tokens, no preamble, no quotes."
)

ENHANCE_INSTRUCTION = (
    "You improve prompts for an image model that draws the subject of a reference image in a new "
    "scene. The reference image is described as:\n{caption}\n\n"
    "The user's prompt is:\n{prompt}\n\n"
    "Rewrite the user's prompt. Keep everything the user said (subject, action, setting, style, "
    "composition) and do not contradict it; fill in the subject's appearance from the description "
    "so the subject is recognisable. Drop details of the reference's background, pose or lighting "
    "unless the user asked for them. Answer with the prompt only: one line, at most 77 tokens, "
    "no preamble, no quotes."
)

_PREFIX = re.compile(
    r"^\s*(?:here(?:'s| is)[^:\n]{0,60}:|(?:enhanced |improved |rewritten |final |new )?(?:prompt|caption)\s*:)\s*",
    re.IGNORECASE,
)
# CLIP's BPE splits on words and punctuation; rare words take several pieces, which the
# budget's 2 slots for start/end tokens and the word-level approximation leave room for.
_TOKEN = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")


@dataclass
class EnhanceResult:
    prompt: str
    caption: str
    usage: Usage


def approx_clip_tokens(text: str) -> int:
    """Approximate CLIP token count (words + punctuation marks), without start/end tokens."""
    return len(_TOKEN.findall(text))


def clean_prompt(text: str, max_tokens: int = MAX_PROMPT_TOKENS) -> str:
    """One line, no label/quotes/fences, at most ``max_tokens - 2`` approximate CLIP tokens."""
    text = text.strip().strip("`").strip()
    text = _PREFIX.sub("", text)
    text = " ".join(text.split())  # newlines and runs of spaces -> single spaces
    text = _PREFIX.sub("", text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    text = text.strip("\"“”").strip()
    budget = max_tokens - 2
    if approx_clip_tokens(text) > budget:
        words, kept, count = text.split(" "), [], 0
        for word in words:
            n = approx_clip_tokens(word)
            if count + n > budget:
                break
            kept.append(word)
            count += n
        text = " ".join(kept).rstrip(",;:-– ")
    return text


def reference_png(image: Image.Image) -> bytes:
    """The reference as PNG, RGB, longest side at most CAPTION_IMAGE_MAX_SIDE (deterministic)."""
    image = image.convert("RGB")
    if max(image.size) > CAPTION_IMAGE_MAX_SIDE:
        scale = CAPTION_IMAGE_MAX_SIDE / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image_to_png_bytes(image)


def caption_request(image: Image.Image) -> ChatRequest:
    return ChatRequest(prompt=CAPTION_INSTRUCTION, images=(reference_png(image),), temperature=0.0,
                       max_output_tokens=256)


def rewrite_request(caption: str, prompt: str) -> ChatRequest:
    return ChatRequest(prompt=ENHANCE_INSTRUCTION.format(caption=caption, prompt=prompt.strip()),
                       temperature=0.0, max_output_tokens=256)


def enhance_prompt(
    provider: Provider,
    image: Image.Image,
    prompt: str,
    *,
    caption_model_provider: Provider | None = None,
) -> EnhanceResult:
    """Caption ``image`` (with ``caption_model_provider`` or ``provider``), then rewrite ``prompt``.

    Raises ``ProviderError`` subclasses (auth, unavailable, refusal); an answer that is empty
    after cleaning raises ProviderResponseError.
    """
    _check_prompt(prompt)
    vlm = caption_model_provider or provider
    cap = vlm.complete(caption_request(image))
    caption = _caption(cap.text, vlm)
    rewritten = provider.complete(rewrite_request(caption, prompt))
    return _result(rewritten.text, provider, caption, cap.usage.merge(rewritten.usage))


async def aenhance_prompt(
    provider: Provider,
    image: Image.Image,
    prompt: str,
    *,
    caption_model_provider: Provider | None = None,
) -> EnhanceResult:
    """:func:`enhance_prompt` on the caller's event loop (``Provider.acomplete``): no thread of its own."""
    _check_prompt(prompt)
    vlm = caption_model_provider or provider
    cap = await vlm.acomplete(caption_request(image))
    caption = _caption(cap.text, vlm)
    rewritten = await provider.acomplete(rewrite_request(caption, prompt))
    return _result(rewritten.text, provider, caption, cap.usage.merge(rewritten.usage))


def _check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise ValueError("enhance_prompt needs a non-empty prompt to enhance")
    if len(prompt) > MAX_USER_PROMPT_CHARS:
        raise ValueError(f"the prompt is {len(prompt):,} characters long; prompt enhancement takes at most "
                         f"{MAX_USER_PROMPT_CHARS:,}")


def _caption(text: str, vlm: Provider) -> str:
    caption = clean_prompt(text)
    if not caption:
        raise ProviderResponseError(
            f"{vlm!r} returned an empty caption for the reference image; try another VLM model"
        )
    return caption


def _result(text: str, provider: Provider, caption: str, usage: Usage) -> EnhanceResult:
    enhanced = clean_prompt(text)
    if not enhanced:
        raise ProviderResponseError(f"{provider!r} returned an empty enhanced prompt; try another LLM model")
    return EnhanceResult(prompt=enhanced, caption=caption, usage=usage)
