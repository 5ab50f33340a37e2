"""Stage 5 - curate: a VLM judges each (reference, target) pair and captions the target.

One request per pair returns both the verdict and the training caption. Why one and not two:
the two panel images dominate the input tokens, so a second request would pay for them again,
and the caption profits from the chain of thought just written (the model has described the
subject in detail). The cost of the caption on rejected pairs is a few dozen output tokens.

The schema's field order IS the paper's chain of thought (structured output is generated in
schema order): name the common subject -> describe it in image A -> in image B -> identical?
-> confidence -> conclusion -> caption. A pair is accepted when ``same_identity`` and
``confidence >= curate.min_confidence``.

Answers are cached by content hash under ``curate/vlm_cache`` and every decision is logged in
``curate/verdicts.jsonl`` (resume). A refused answer is asked again, rephrased, up to
``curate.refusal_retries`` times before it is a final reject (reason and attempts recorded); a
malformed answer is a reject with its reason; an unreachable server leaves the pair undone for the
next run. Each upload view is decoded before it is sent (datagen/vlm_view.py): a damaged one is
rebuilt from its panel; a pair with a panel that cannot be read is a reject of this run, counted
and named in the summary but not recorded, so the rerun after the file is repaired asks it (and
no other pair). With ``vlm.use_batch_api`` the pairs go through the OpenAI Batch API; each batch
id is logged before anything else, so a rerun collects it instead of submitting again. Without a
``vlm`` provider (the toy) every pair is accepted with verdict "skipped" and captioned from its
grid prompt.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsd.manifest import RecordLog, iter_jsonl, read_records

from .config import CurateConfig, DatagenInputError
from .llm import VLM_FAILURES, LLMStageError, classify_error, settle_failure, stage_provider
from .summary import ItemErrors, StageSummary
from .vlm_view import UnreadableImage, ViewSpec, upload_bytes

logger = logging.getLogger(__name__)

CURATE_SYSTEM = (
    "You curate training data for an identity-preserving image generator. You are shown two panels cut "
    "from one generated grid that was meant to show the same subject. Decide carefully whether both show "
    "the IDENTICAL subject - the same individual object, character or scene, not merely the same kind. "
    "Pose, expression, viewpoint, lighting and background may differ; identity features (shape, colours, "
    "markings, proportions, face, clothing, materials, text) may not."
)
CURATE_PROMPT = (
    "Image A is the first image, image B the second. Fill the fields in order, thinking step by step:\n"
    "1. subject: name the common object, character or scene present in both images.\n"
    "2. description_a: describe that subject in image A in detail (identity features).\n"
    "3. description_b: describe that subject in image B in the same detail.\n"
    "4. same_identity: true only if A and B show the identical subject.\n"
    "5. confidence: your confidence in that decision, from 0 to 1.\n"
    "6. reason: one sentence that concludes, naming any identity difference.\n"
    "7. caption: one sentence describing image B for training a text-to-image model: the subject and "
    "what this picture shows (pose, expression, setting, lighting). Do not mention images, panels or grids.\n"
    "For context, the grid was drawn from this prompt: {prompt}"
)
VERDICT_FIELDS = ("subject", "description_a", "description_b", "same_identity", "confidence", "reason", "caption")
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "subject": {"type": "string"},
        "description_a": {"type": "string"},
        "description_b": {"type": "string"},
        "same_identity": {"type": "boolean"},
        "confidence": {"type": "number"},
        "reason": {"type": "string"},
        "caption": {"type": "string"},
    },
    "required": list(VERDICT_FIELDS),
    "additionalProperties": False,
}


def resolve_path(path: str, base: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() or p.exists() else base / p


def encode_panel(path: Path, max_side: int, image_format: str = "png", quality: int = 90) -> bytes:
    """Upload bytes of a panel (``vlm_view.upload_bytes``): the view the panels stage wrote when it
    has these settings and decodes, else the panel decoded and encoded now."""
    return upload_bytes(path, ViewSpec(max_side, image_format, quality))


def panel_encoding(cfg: CurateConfig) -> ViewSpec:
    """``(max side, "png" | "jpeg", jpeg quality)`` from the curate config."""
    return ViewSpec(cfg.max_image_side, cfg.image_format, cfg.jpeg_quality)


def curate_request(ref_png: bytes, target_png: bytes, prompt: str):
    from dsd.providers import ChatRequest

    return ChatRequest(
        prompt=CURATE_PROMPT.format(prompt=prompt or "(unknown)"),
        system=CURATE_SYSTEM,
        images=(ref_png, target_png),
        json_schema=VERDICT_SCHEMA,
        schema_name="pair_verdict",
        temperature=0.0,
        max_output_tokens=800,
    )


def verdict_record(pair: dict[str, Any], data: dict[str, Any] | None, cfg: CurateConfig, usage: Any) -> dict[str, Any]:
    """The verdicts.jsonl record for a structured answer (or a reject when it is incomplete)."""
    rec = _base_record(pair)
    rec["usage"] = usage.to_dict() if hasattr(usage, "to_dict") else (usage or {})
    if not isinstance(data, dict) or any(k not in data for k in VERDICT_FIELDS):
        missing = [k for k in VERDICT_FIELDS if not isinstance(data, dict) or k not in data]
        rec.update(reason=f"malformed answer: missing {', '.join(missing)}")
        return rec
    confidence = parse_confidence(data["confidence"])
    if confidence is None:
        rec.update(reason=f"malformed answer: confidence {data['confidence']!r:.40} is not a finite number")
        return rec
    same = data["same_identity"] is True
    rec.update({k: str(data[k]) for k in ("subject", "description_a", "description_b", "reason", "caption")})
    rec.update(same_identity=same, confidence=confidence, verdict="vlm")
    caption_ok = bool(rec["caption"].strip())
    rec["accepted"] = same and confidence >= cfg.min_confidence and caption_ok
    if not rec["accepted"]:
        rec["reject_reason"] = (
            "different identity" if not same else "low confidence" if confidence < cfg.min_confidence else "empty caption"
        )
    return rec


def parse_confidence(value: Any) -> float | None:
    """A VLM's confidence clamped to [0, 1]; None when it is no finite number (NaN, inf, text)."""
    try:
        confidence = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past float range
        return None
    return min(1.0, max(0.0, confidence)) if math.isfinite(confidence) else None


def _base_record(pair: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": pair["id"], "grid_id": pair.get("grid_id"), "ref_index": pair.get("ref_index"),
        "target_index": pair.get("target_index"), "accepted": False, "verdict": "error", "subject": "",
        "description_a": "", "description_b": "", "same_identity": False, "confidence": 0.0, "reason": "",
        "caption": "", "usage": {},
    }  # fmt: skip


def prompt_index(workdir: Path) -> dict[str, dict[str, Any]]:
    """{grid_id: prompt record (+ "seed")}, joining the teacher's grids with the prompts."""
    grids = {str(g["id"]): g for g in read_records(workdir / "teacher" / "grids.jsonl")}
    wanted = {str(g.get("prompt_id")) for g in grids.values()}
    prompts: dict[str, dict[str, Any]] = {}
    path = workdir / "prompts" / "prompts.jsonl"
    if path.exists():
        for rec in iter_jsonl(path):
            if str(rec["id"]) in wanted:
                prompts[str(rec["id"])] = rec
    out = {}
    for gid, g in grids.items():
        p = dict(prompts.get(str(g.get("prompt_id")), {}))
        if not p.get("prompt") and g.get("prompt"):  # grids brought in by import-grids carry their prompt
            p["prompt"] = g["prompt"]
        p["seed"] = g.get("seed")
        out[gid] = p
    return out


def skipped_record(pair: dict[str, Any], prompt: dict[str, Any]) -> dict[str, Any]:
    """No VLM configured (toy / offline): accept, caption from the grid prompt's target panel line."""
    rec = _base_record(pair)
    panels = prompt.get("panels") or []
    k = pair.get("target_index")
    line = panels[k] if isinstance(k, int) and 0 <= k < len(panels) else ""
    subject = prompt.get("subject", "")
    rec.update(
        accepted=True, verdict="skipped", subject=subject, same_identity=True, confidence=1.0,
        reason="curation skipped: no vlm provider configured",
        caption=", ".join(x for x in (subject, line) if x) or prompt.get("prompt", ""),
    )  # fmt: skip
    return rec


def _pairs(workdir: Path, cfg: CurateConfig) -> list[dict[str, Any]]:
    path = workdir / "panels" / "pairs.jsonl"
    if not path.is_file():
        raise DatagenInputError(f"{path} does not exist: run the panels stage first")
    pairs = sorted(read_records(path), key=lambda r: str(r["id"]))
    return pairs[: cfg.max_pairs] if cfg.max_pairs else pairs


def run_curate(cfg: CurateConfig, workdir: Path, *, vlm=None, progress: bool = True, max_references: int = 1) -> StageSummary:
    """Write ``workdir/curate/verdicts.jsonl`` for every pair of ``workdir/panels/pairs.jsonl``; resumable.
    With ``max_references`` > 1, then the tuples' verdicts (datagen/tuples.py)."""
    from tqdm import tqdm

    summary = StageSummary("curate")
    out_dir = workdir / "curate"
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = _pairs(workdir, cfg)
    with RecordLog(out_dir / "verdicts.jsonl", flush_every=64, flush_s=0.5) as log, ItemErrors(summary) as errors:
        run = _CurateRun(cfg, out_dir, prompt_index(workdir), workdir / "panels", log, summary, errors)
        todo = _todo(run, pairs)
        if vlm is None:
            _run_skipped(run, todo, progress)
        else:
            with stage_provider(vlm, out_dir / "vlm_cache", summary) as provider:
                run.provider = provider
                if vlm.use_batch_api:
                    _run_batches(run, todo)
                else:
                    with tqdm(total=len(todo), desc="curate", unit="pair", disable=not progress,
                              mininterval=0.5) as run.bar:
                        _run_online(run, todo)
    if max_references > 1:
        from .tuples import run_tuples

        run_tuples(cfg, workdir, vlm, max_references, summary)
    return summary.stop()


@dataclass
class _CurateRun:
    """What every step of one curate run shares: config, prompts, the verdict log and summary, the
    provider, the progress bar (None in batch mode)."""

    cfg: CurateConfig
    out_dir: Path
    prompts: dict[str, dict[str, Any]]
    base: Path  # the folder pair paths are relative to
    log: RecordLog
    summary: StageSummary
    errors: ItemErrors
    provider: Any = None
    bar: Any = None
    kind: Any = None  # how an item becomes a request and a record: _PairKind, or datagen.tuples' TupleKind

    def __post_init__(self) -> None:
        if self.kind is None:
            self.kind = _PairKind()

    def prompt_for(self, pair: dict[str, Any]) -> dict[str, Any]:
        return self.prompts.get(str(pair.get("grid_id")), {})

    def record(self, rec: dict[str, Any]) -> None:
        """Log a pair's final verdict and count it."""
        self.log.append(rec)
        _count(self.summary, rec)

    def raised(self, pair: dict[str, Any], step: str, exc: Exception) -> None:
        """A pair whose ``step`` raised: a reject ("error" verdict) through the stage's ItemErrors."""

        def write(reason: str, category: str) -> None:
            rec = self.kind.base(pair)
            rec.update(reason=reason, reject_reason=category)
            self.record(rec)

        self.errors.failed(pair.get("id"), step, exc, write)

    def unreadable(self, pair: dict[str, Any], exc: UnreadableImage) -> None:
        """A pair with a panel that cannot be read: counted as a reject, recorded nowhere (ItemErrors)."""
        self.errors.unreadable(pair.get("id"), exc)

    def tick(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)


class _PairKind:
    """A (reference, target) pair: one request with two panels. The module's functions are looked up
    at call time (tests replace ``verdict_record``)."""

    def base(self, pair: dict[str, Any]) -> dict[str, Any]:
        return _base_record(pair)

    def request(self, run: _CurateRun, pair: dict[str, Any], panel):
        ref, target = panel(pair["ref_path"]), panel(pair["target_path"])
        return curate_request(ref, target, run.prompt_for(pair).get("prompt", ""))

    def verdict(self, pair: dict[str, Any], data: Any, cfg: CurateConfig, usage: Any) -> dict[str, Any]:
        return verdict_record(pair, data, cfg, usage)


def _todo(run: _CurateRun, pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pairs no earlier run decided; the decided ones are counted again so the summary is whole."""
    todo = []
    for pair in pairs:
        run.summary.items_in += 1
        done = run.log.get(pair["id"])
        if done is None:
            todo.append(pair)
            continue
        run.summary.skipped_done += 1
        _count(run.summary, done)
    return todo


def _run_skipped(run: _CurateRun, todo: list[dict[str, Any]], progress: bool) -> None:
    from tqdm import tqdm

    for pair in tqdm(todo, desc="curate (skipped: no vlm)", unit="pair", disable=not progress):
        try:
            rec = skipped_record(pair, run.prompt_for(pair))
        except Exception as exc:  # noqa: BLE001 - one pair's failure is its reject, not the stage's end
            run.raised(pair, "caption", exc)
            continue
        run.record(rec)
    run.summary.extra["verdict"] = "skipped (no vlm provider; every pair accepted)"


def _count(summary: StageSummary, rec: dict[str, Any]) -> None:
    if rec.get("accepted"):
        summary.items_out += 1
    else:
        summary.reject(rec.get("reject_reason") or rec.get("reason") or "rejected")


def _build_requests(run: _CurateRun, chunk: list[dict[str, Any]]):
    """(pairs, requests) for the pairs whose images load; the others become rejects."""
    kept, requests, bad = _encode_chunk(run, chunk)
    _record_bad(run, bad)
    return kept, requests


def _record_bad(run: _CurateRun, bad: list) -> None:
    """Count or log what ``_encode_chunk`` could not encode, a (pair, exception) each (ItemErrors)."""
    for pair, exc in bad:
        if isinstance(exc, UnreadableImage):
            run.unreadable(pair, exc)
        else:
            run.raised(pair, "view", exc)


def _encode_chunk(run: _CurateRun, chunk: list[dict[str, Any]]):
    """(pairs, requests, bad): pure work, safe in a producer thread (reads ``run``, logs nothing;
    it may rewrite a damaged upload view). ``bad`` holds (pair, exception) per pair whose encoding
    raised, an unreadable panel's UnreadableImage included (see ``_record_bad``).

    Each panel file is read and encoded once per chunk even when it appears in several pairs
    (a reference panel is paired with every other panel of its grid); retries reuse the request."""
    max_side, fmt, quality = panel_encoding(run.cfg)
    encoded: dict[Path, bytes | Exception] = {}

    def panel(path: str) -> bytes:
        p = resolve_path(path, run.base)
        if p not in encoded:
            try:
                encoded[p] = encode_panel(p, max_side, fmt, quality)
            except Exception as exc:  # noqa: BLE001 - remembered, raised for every pair of this panel
                encoded[p] = exc
        got = encoded[p]
        if isinstance(got, Exception):
            raise got
        return got

    kept, requests, bad = [], [], []
    for pair in chunk:
        try:
            request = run.kind.request(run, pair, panel)
        except Exception as exc:  # noqa: BLE001 - one pair's failure is its reject, not the stage's end
            bad.append((pair, exc))
            continue
        kept.append(pair)
        requests.append(request)
    return kept, requests, bad


def _record_result(run: _CurateRun, pair, result, attempts: int = 1) -> None:
    if isinstance(result, Exception):
        reason = settle_failure(result, run.summary, "curate stage", counter=VLM_FAILURES)
        if reason is None:
            return
        rec = run.kind.base(pair)
        if _is_refusal(result):
            reason = f"refused {attempts} time(s) (curate.refusal_retries = {run.cfg.refusal_retries}): {reason}"
        rec["reason"] = rec["reject_reason"] = reason
        rec["verdict"] = "refused" if _is_refusal(result) else "malformed"
    else:
        try:
            rec = run.kind.verdict(pair, result.data, run.cfg, result.usage)
        except Exception as exc:  # noqa: BLE001 - one answer that breaks the parser is its pair's reject
            run.raised(pair, "verdict", exc)
            return
        if rec["verdict"] == "error":
            rec["reject_reason"] = rec["reason"]
    rec["attempts"] = attempts
    run.record(rec)


# A refusal is often about the wording, not the images: each retry asks again with the next preamble.
REPHRASINGS = (
    "This is an automated quality check of synthetic, computer-generated pictures for an image dataset. "
    "Nobody is identified; only compare the visual subject of the two pictures.\n",
    "Context: dataset curation of generated illustrations. Judge only whether the two pictures show the "
    "same visual subject (an object, a drawn character or a scene); no identification of anyone is asked.\n",
)


def rephrase(request, retry: int):
    """``request`` for the ``retry``-th retry (1-based): the same images and schema, another preamble."""
    import dataclasses

    return dataclasses.replace(request, prompt=REPHRASINGS[(retry - 1) % len(REPHRASINGS)] + request.prompt)


def _is_refusal(result: object) -> bool:
    from dsd.providers import ProviderRefusal

    return isinstance(result, ProviderRefusal)


def _settle(run: _CurateRun, answers: Iterable[tuple[dict[str, Any], Any, Any]]) -> None:
    """Record each (pair, request, result); refused pairs are asked again first (``_retry_refused``)."""
    refused = []
    for pair, request, result in answers:
        if _is_refusal(result) and run.cfg.refusal_retries > 0:
            refused.append((pair, request))
            continue
        _record_result(run, pair, result)
        run.tick()
    _retry_refused(run, refused)


def _retry_refused(run: _CurateRun, refused: list) -> None:
    """Ask again for refused pairs, rephrased, up to ``curate.refusal_retries`` times; the last answer
    is final. Nothing is logged before a pair's final answer, so a run killed in between asks the
    same questions again and, from a provider that answers the same way, gets the same dataset."""
    for retry in range(1, run.cfg.refusal_retries + 1):
        if not refused:
            return
        requests = [rephrase(request, retry) for _, request in refused]
        again = []
        # closing: an exception leaving the loop (a stage fault) cancels the requests still pending
        # now, not when its traceback is collected, after the provider has closed its event loop
        with closing(run.provider.map(requests)) as answers:
            for index, result in answers:
                pair, original = refused[index]
                if _is_refusal(result) and retry < run.cfg.refusal_retries:
                    again.append((pair, original))
                    continue
                _record_result(run, pair, result, attempts=retry + 1)
                run.tick()
        refused = again


def _slices(todo: list, first: int, largest: int) -> list[list]:
    """Slices of ``todo`` growing from ``first`` (two rounds of the provider's concurrency) to
    ``largest`` (``curate.chunk``): the first requests go out after a few panels are encoded rather
    than a whole chunk, while later slices are large so the drain at each slice's end is rare."""
    out, start, size = [], 0, max(1, min(first, largest))
    while start < len(todo):
        out.append(todo[start : start + size])
        start += size
        size = min(largest, size * 2)
    return out


def _run_online(run: _CurateRun, todo: list[dict[str, Any]]) -> None:
    """Chunks through ``provider.map``; a producer thread reads and encodes the next chunk's panels
    while the current chunk's requests are in flight (image decoding/encoding releases the GIL in
    PIL, and the requests wait on the network), so encoding no longer stalls the pipeline."""
    chunks = _slices(todo, 2 * max(1, int(getattr(run.provider.config, "max_concurrency", 8))), run.cfg.chunk)
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsd-curate-encode") as producer:
        pending = producer.submit(_encode_chunk, run, chunks[0])
        for i, chunk in enumerate(chunks):
            kept, requests, bad = pending.result()
            if i + 1 < len(chunks):
                pending = producer.submit(_encode_chunk, run, chunks[i + 1])
            _record_bad(run, bad)
            run.tick(len(chunk) - len(kept))
            if not requests:  # every item of the chunk bad: no map (its unstarted coroutine would warn)
                continue
            with closing(run.provider.map(requests)) as answers:  # see _retry_refused
                _settle(run, ((kept[index], requests[index], result) for index, result in answers))


# ---------------------------------------------------------------- OpenAI Batch API
def _run_batches(run: _CurateRun, todo: list[dict[str, Any]]) -> None:
    by_id = {p["id"]: p for p in todo}
    with (
        RecordLog(run.out_dir / "batches.jsonl") as submitted,
        RecordLog(run.out_dir / "batches_collected.jsonl") as collected,
    ):
        # 1. collect what an earlier run submitted (never resubmit a running batch)
        in_flight: set[str] = set()
        for batch in submitted.records():
            if batch["id"] in collected:
                continue
            members = [by_id[i] for i in batch["pair_ids"] if i in by_id]
            if not members:
                collected.append({"id": batch["id"]})
                continue
            in_flight.update(p["id"] for p in members)
            _collect(run, batch["id"], members, collected)
        # 2. submit the rest, logging each batch id before waiting on it
        fresh = [p for p in todo if p["id"] not in in_flight and p["id"] not in run.log]
        for start in range(0, len(fresh), run.cfg.batch_size):
            kept, requests = _build_requests(run, fresh[start : start + run.cfg.batch_size])
            if not requests:
                continue
            batch_id = _submit(run, kept, requests)
            submitted.append({"id": batch_id, "pair_ids": [p["id"] for p in kept], "submitted_at": time.time()})
            run.summary.add("batches submitted")
            _collect(run, batch_id, kept, collected, requests)


def _submit(run: _CurateRun, kept: list[dict[str, Any]], requests: list) -> str:
    from dsd.providers import ProviderError, ProviderUnavailable

    try:
        return run.provider.submit_batch({p["id"]: r for p, r in zip(kept, requests, strict=True)})
    except ProviderError as exc:
        kind, reason = classify_error(exc)
        if kind == "fatal" or isinstance(exc, ProviderUnavailable):
            raise LLMStageError(f"curate stage: could not submit a batch: {reason}") from exc
        raise


def _collect(run: _CurateRun, batch_id: str, members, collected: RecordLog, requests=None) -> None:
    from dsd.providers import ProviderUnavailable

    if requests is None:  # rebuild the identical requests (schema check + cache on collect)
        members, requests = _build_requests(run, members)
    try:
        results = run.provider.collect_batch(
            batch_id,
            requests={p["id"]: r for p, r in zip(members, requests, strict=True)},
            poll_interval_s=run.cfg.batch_poll_s,
            timeout_s=run.cfg.batch_wait_s,
        )
    except ProviderUnavailable as exc:
        logger.info("batch %s not ready: %s", batch_id, exc)
        run.summary.add("batches still running (rerun to collect)")
        return
    _settle(run, _batch_answers(run, members, requests, results))  # refusals retried online: not worth a batch
    collected.append({"id": batch_id})


def _batch_answers(run: _CurateRun, members, requests, results: dict) -> Iterator[tuple[dict[str, Any], Any, Any]]:
    """(pair, request, result) for the members the batch answered; the others are left for a rerun."""
    for pair, request in zip(members, requests, strict=True):
        result = results.get(pair["id"])
        if result is None:
            run.summary.add(VLM_FAILURES)
            continue
        yield pair, request, result
