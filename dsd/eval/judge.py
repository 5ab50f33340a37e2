"""The VLM judge: concept preservation (CP) and prompt following (PF) on DreamBench++'s 0-4 rubric.

Our own prompts, same scale as the paper's GPT-4o judge (Sec. 4): each aspect is one request
whose JSON schema puts the chain of thought first (structured output is generated in schema order)
and the integer score last. CP sees the reference and the output; PF sees the output and the
prompt only, so the subject's identity cannot leak into it. Scores are divided by 4 (the paper's
figures) and averaged over ``repeats`` independent judgements, with their spread; CP x PF is the
paper's overall figure. ``debiased`` adds the paper's variant that does not reward copying the
reference unchanged.

Everything goes through :mod:`dsd.providers` (Gemini, OpenAI or any OpenAI-compatible server):
retries, bounded concurrency, the content-hash answer cache and token/cost accounting. Repeat k
says "judgement k of n" in its prompt, so each repeat is its own cache entry (a rerun reuses all of
them) instead of N copies of the first. A refused or malformed run is dropped from the average
and named in ``failures``; a server that stays unreachable raises :class:`JudgeUnavailable`
(the item is retried on the next run), a rejected key :class:`JudgeConfigError`.
"""

from __future__ import annotations

import asyncio
import io
import statistics
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from PIL import Image

from ..images import ORIENTATION_TAG, read_image, to_rgb
from ..providers import (
    ChatRequest,
    ChatResult,
    Provider,
    ProviderAuthError,
    ProviderError,
    ProviderRefusal,
    ProviderResponseError,
    Usage,
)

ImageLike = Union[Image.Image, bytes, str, Path]
ASPECTS = ("cp", "pf")

CP_SYSTEM = (
    "You are a strict, consistent judge of personalised image generation. You compare the subject of a "
    "reference image with the subject drawn in a generated image and rate how well its identity is preserved."
)
CP_PROMPT = (
    "The first image is the reference, the second the generated image. Fill the fields in order:\n"
    "1. subject: name the main subject of the reference (an object, character, animal, person or style).\n"
    "2. reference_features: list its identity features in detail: shape, proportions, colours, markings, "
    "materials, face, clothing, text, or for a style its palette, strokes and rendering.\n"
    "3. generated_features: describe the same features as they appear in the generated image.\n"
    "4. differences: every identity difference you see. Pose, viewpoint, expression, lighting and setting may "
    "change freely and are not differences.{debias}\n"
    "5. score, an integer on this scale:\n"
    "   0: the subject is missing or is a different kind of thing;\n"
    "   1: the same kind of thing, but most identity features differ;\n"
    "   2: recognisably similar, with several clear identity differences;\n"
    "   3: the same subject with minor differences;\n"
    "   4: the identical subject, every identity feature preserved.\n"
    "{run}"
)
CP_DEBIAS = (
    " Do not reward copying: if the generated image repeats the reference almost pixel for pixel (same pose, "
    "framing and background) instead of showing the subject anew, score at most 2."
)
PF_SYSTEM = (
    "You are a strict, consistent judge of text-to-image generation. You rate how completely a generated "
    "image follows its prompt."
)
PF_PROMPT = (
    "The image was generated from this prompt:\n{prompt}\nFill the fields in order:\n"
    "1. prompt_elements: list every element the prompt asks for (subject, action, setting, style, attributes, "
    "counts, relations).\n"
    "2. image_content: describe what the image shows for each of those elements.\n"
    "3. missing_or_wrong: the elements that are missing or wrong. Judge only the prompt, not whether the subject "
    "matches any particular individual.\n"
    "4. score, an integer on this scale:\n"
    "   0: the image has nothing to do with the prompt;\n"
    "   1: only a few elements are present;\n"
    "   2: about half of the elements are present;\n"
    "   3: most elements are present, with minor omissions or errors;\n"
    "   4: every element of the prompt is present and right.\n"
    "{run}"
)


def _schema(fields: tuple[str, ...]) -> dict[str, Any]:
    props: dict[str, Any] = {name: {"type": "string"} for name in fields}
    props["score"] = {"type": "integer", "enum": [0, 1, 2, 3, 4]}
    return {"type": "object", "properties": props, "required": [*fields, "score"], "additionalProperties": False}


CP_SCHEMA = _schema(("subject", "reference_features", "generated_features", "differences"))
PF_SCHEMA = _schema(("prompt_elements", "image_content", "missing_or_wrong"))


class JudgeUnavailable(ProviderError):
    """The judge's server did not answer after all retries; the item stays undone for the next run."""


class JudgeConfigError(ProviderError):
    """The judge cannot work at all with this provider (e.g. a missing or rejected API key)."""


@dataclass
class JudgeScore:
    """Scores in [0, 1] (the 0-4 rubric divided by 4), mean and population spread over the valid runs."""

    cp: float | None
    pf: float | None
    cp_std: float | None
    pf_std: float | None
    cp_runs: list[int] = field(default_factory=list)
    pf_runs: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)

    @property
    def cp_x_pf(self) -> float | None:
        return None if self.cp is None or self.pf is None else self.cp * self.pf

    def to_record(self) -> dict[str, Any]:
        return {
            "cp": self.cp, "pf": self.pf, "cp_std": self.cp_std, "pf_std": self.pf_std, "cp_x_pf": self.cp_x_pf,
            "cp_runs": self.cp_runs, "pf_runs": self.pf_runs, "judge_failures": self.failures,
            "judge_usage": self.usage.to_dict(),
        }  # fmt: skip


def encode_image(image: ImageLike, max_side: int = 512, image_format: str = "jpeg", quality: int = 90) -> bytes:
    """Upload bytes: the image downscaled so its long side is at most ``max_side``.

    A JPEG file that is already small enough is sent as it is (reading its header costs nothing, decoding
    and re-encoding it would cost more CPU than the request itself): the judge views that sampling writes."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, str | Path):
        with Image.open(image) as im:
            upright = im.getexif().get(ORIENTATION_TAG, 1) == 1  # an API may not turn a tagged photo
            if image_format == "jpeg" and im.format == "JPEG" and upright and max(im.size) <= max_side:
                return Path(image).read_bytes()
        image = read_image(image)
    img = to_rgb(image)
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if image_format == "png":
        img.save(buf, format="PNG")
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class Judge:
    """``Judge(provider, repeats=3).score_sync(reference, output, prompt) -> JudgeScore``."""

    def __init__(
        self,
        provider: Provider,
        repeats: int = 1,
        *,
        temperature: float | None = None,
        debiased: bool = False,
        max_image_side: int = 512,
        image_format: str = "jpeg",
        max_output_tokens: int = 1200,
    ) -> None:
        if repeats < 1:
            raise ValueError(f"Judge repeats must be >= 1, got {repeats}")
        self.provider = provider
        self.repeats = repeats
        # One judgement is the deterministic choice; repeats only mean something when they can differ.
        self.temperature = temperature if temperature is not None else (0.0 if repeats == 1 else 0.7)
        self.debiased = debiased
        self.max_image_side = max_image_side
        self.image_format = image_format
        self.max_output_tokens = max_output_tokens

    # -- requests and answers -------------------------------------------------------------------
    def encode(self, image: ImageLike) -> bytes:
        return encode_image(image, self.max_image_side, self.image_format)

    def requests(self, reference: ImageLike, output: ImageLike, prompt: str) -> list[tuple[str, ChatRequest]]:
        """(aspect, request) for every run: ``repeats`` CP requests, then ``repeats`` PF requests."""
        ref, out = self.encode(reference), self.encode(output)
        debias = CP_DEBIAS if self.debiased else ""
        reqs = []
        for aspect in ASPECTS:
            for k in range(self.repeats):
                run = f"(Independent judgement {k + 1} of {self.repeats}.)" if self.repeats > 1 else ""
                if aspect == "cp":
                    text, system, images, schema = CP_PROMPT.format(debias=debias, run=run), CP_SYSTEM, (ref, out), CP_SCHEMA
                else:
                    text, system, images, schema = PF_PROMPT.format(prompt=prompt, run=run), PF_SYSTEM, (out,), PF_SCHEMA
                reqs.append((aspect, ChatRequest(
                    prompt=text.rstrip(), system=system, images=images, json_schema=schema,
                    schema_name=f"{aspect}_judgement", temperature=self.temperature,
                    max_output_tokens=self.max_output_tokens,
                )))  # fmt: skip
        return reqs

    def combine(self, answers: Sequence[tuple[str, ChatResult | BaseException]]) -> JudgeScore:
        """One :class:`JudgeScore` from the runs' answers (raises on an unavailable or misconfigured server)."""
        runs: dict[str, list[int]] = {a: [] for a in ASPECTS}
        failures: list[str] = []
        usage = Usage()
        for aspect, answer in answers:
            if isinstance(answer, ProviderAuthError):
                raise JudgeConfigError(f"VLM judge: {answer}") from answer
            if isinstance(answer, ProviderRefusal):
                failures.append(f"{aspect}: refused: {_first_line(answer)}")
            elif isinstance(answer, ProviderResponseError):
                failures.append(f"{aspect}: malformed answer: {_first_line(answer)}")
            elif isinstance(answer, BaseException):
                raise JudgeUnavailable(f"VLM judge: {_first_line(answer)}") from answer
            else:
                usage.add(answer.usage)
                runs[aspect].append(int((answer.data or {})["score"]))
        runs = {a: sorted(v) for a, v in runs.items()}  # arrival order is not part of the result
        cp, cp_std = _mean_std(runs["cp"])
        pf, pf_std = _mean_std(runs["pf"])
        return JudgeScore(cp, pf, cp_std, pf_std, runs["cp"], runs["pf"], failures, usage)

    # -- entry points -----------------------------------------------------------------------------
    async def score(self, reference: ImageLike, output: ImageLike, prompt: str) -> JudgeScore:
        """Judge one output (on the caller's event loop; the provider bounds the concurrency)."""
        reqs = self.requests(reference, output, prompt)
        answers = await asyncio.gather(*(self.provider.acomplete(r) for _, r in reqs), return_exceptions=True)
        return self.combine([(aspect, answer) for (aspect, _), answer in zip(reqs, answers, strict=True)])

    def score_sync(self, reference: ImageLike, output: ImageLike, prompt: str) -> JudgeScore:
        """:meth:`score` for callers without an event loop (training validation, scripts)."""
        reqs = self.requests(reference, output, prompt)
        answers: list[Any] = [None] * len(reqs)
        for index, answer in self.provider.map([r for _, r in reqs]):
            answers[index] = answer
        return self.combine([(aspect, answer) for (aspect, _), answer in zip(reqs, answers, strict=True)])

    def score_many(
        self, items: Sequence[tuple[ImageLike, ImageLike, str]], *, chunk: int = 512
    ) -> Iterator[tuple[int, JudgeScore | JudgeUnavailable]]:
        """Judge many outputs with the provider's bounded concurrency; yields ``(index, score)`` as each
        item's runs complete. While one slice's requests are in flight, a worker thread encodes the next
        slice's images. An unavailable server yields :class:`JudgeUnavailable` for that item only."""
        slices = _slices(len(items), max(1, int(self.provider.config.max_concurrency)), max(1, chunk))
        if not slices:
            return
        references: dict[Any, bytes] = {}  # only the single producer thread touches it
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsd-judge-encode") as pool:
            pending = pool.submit(self._chunk_requests, items, *slices[0], references)
            for nxt in [*slices[1:], None]:
                flat = pending.result()
                if nxt is not None:
                    pending = pool.submit(self._chunk_requests, items, *nxt, references)
                yield from self._run_chunk(flat)

    def _chunk_requests(self, items, start: int, stop: int, encoded: dict[Any, bytes]) -> list[tuple[int, str, ChatRequest]]:
        flat = []
        for index in range(start, stop):
            reference, output, prompt = items[index]
            key = reference if isinstance(reference, str | Path) else id(reference)
            if key not in encoded:  # a subject's reference is shared by all its outputs: encode once
                encoded[key] = self.encode(reference)
            flat += [(index, aspect, r) for aspect, r in self.requests(encoded[key], output, prompt)]
        return flat

    def _run_chunk(self, flat) -> Iterator[tuple[int, JudgeScore | JudgeUnavailable]]:
        per_item = 2 * self.repeats
        got: dict[int, list[tuple[str, Any]]] = {}
        for k, answer in self.provider.map([r for _, _, r in flat]):
            index, aspect, _ = flat[k]
            got.setdefault(index, []).append((aspect, answer))
            if len(got[index]) == per_item:
                answers = sorted(got.pop(index), key=lambda a: a[0])  # stable per aspect: runs stay in order of arrival
                try:
                    yield index, self.combine(answers)
                except JudgeUnavailable as exc:
                    yield index, exc


def _slices(total: int, first: int, largest: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges: ``first`` items (two rounds of requests at full concurrency, each item
    being two requests or more), then ``largest`` at a time. The first requests go out after a few
    images are encoded; every later slice is as large as memory allows, because each slice boundary
    drains the requests in flight (a doubling schedule drained four times in 480 items and cost 8
    points of efficiency at 32 in flight in benchmarks.eval_judge_throughput)."""
    head = min(first, largest, total)
    out = [(0, head)] if head else []
    out += [(start, min(total, start + largest)) for start in range(head, total, largest)]
    return out


def _mean_std(values: list[int]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    scaled = [v / 4.0 for v in values]
    return statistics.fmean(scaled), statistics.pstdev(scaled)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
