"""Stage 2 - prompts: caption -> grid prompt (subject, kind, layout, one line per panel).

Two sources, one record format (``prompts/prompts.jsonl``):
- ``mode="llm"``: the `llm` provider answers a JSON schema (subject, subject_kind, layout, per
  panel expression/pose/lighting/setting); the caption is a content reference, which is what
  keeps the prompts diverse (paper Sec. 3.1.2).
- ``mode="template"``: no LLM; the subject is cut heuristically from the caption and the panel
  variations are drawn from fixed lists with a per-caption seeded RNG (deterministic).
Either way the final text uses the paper's phrasings ("a grid of 4 images representing the same
...", "an evenly separated 4 panels, depicting identical ..."). The stage streams: captions are
read line by line, LLM requests go out in bounded chunks, near duplicates are caught by a
constant-size MinHash/Bloom filter (datagen/diversity.py).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dsd.manifest import ManifestError, RecordLog, iter_jsonl

from .config import LAYOUTS, SUBJECT_KINDS, DatagenInputError, PromptsConfig
from .diversity import NearDuplicateFilter, Reservoir, diversity_report
from .llm import settle_failure, stage_provider
from .summary import ItemErrors, StageSummary

logger = logging.getLogger(__name__)

TEMPLATES = {
    "grid_of": "a grid of {n} images representing the same {kind}: {subject}. {panels}",
    "evenly_separated": "an evenly separated {n} panels, depicting identical {kind}: {subject}. {panels}",
}

# ---------------------------------------------------------------- fixed variation lists
_VARIATIONS: dict[str, dict[str, list[str]]] = {
    "character": {
        "expression": ["smiling", "laughing", "serious expression", "surprised", "thoughtful look", "calm expression",
                       "determined look", "playful expression"],
        "pose": ["front view, standing", "three-quarter view, sitting", "side profile, walking", "close-up portrait",
                 "full body, arms crossed", "looking over the shoulder", "running", "leaning against a wall"],
    },
    "object": {
        "expression": [""],
        "pose": ["front view", "three-quarter view", "top-down view", "close-up detail", "side view",
                 "seen from a low angle", "held in a hand", "placed on a shelf"],
    },
    "scene": {
        "expression": ["at dawn", "at noon", "at dusk", "at night", "in winter", "in autumn", "after rain", "in fog"],
        "pose": ["wide shot", "aerial view", "eye-level view", "panoramic view", "view through a window",
                 "close view of a detail"],
    },
    "style": {
        "expression": [""],
        "pose": ["a portrait", "a landscape", "a still life", "an animal", "a city street", "a building",
                 "a vehicle", "a flower"],
    },
}
_LIGHTING = ["soft morning light", "golden hour sunlight", "overcast daylight", "dramatic studio lighting",
             "neon night lighting", "candlelight", "bright midday sun", "moody blue hour light", "backlit"]
_SETTINGS = ["in a city street", "on a beach", "in a forest", "in a cozy living room", "in a snowy landscape",
             "in a photo studio with a plain backdrop", "in a busy market", "in a library", "on a mountain trail",
             "in a kitchen", "in a garden", "on a rooftop"]

_KIND_WORDS = {
    "character": set(
        "man woman boy girl person child kid baby lady guy people men women character actor actress player "
        "dog cat puppy kitten bird horse fox bear rabbit lion tiger owl parrot monkey elephant robot knight "
        "warrior princess wizard girl's boy's teenager student chef soldier".split()
    ),
    "scene": set(
        "landscape city skyline street room interior beach mountain mountains forest village lake river "
        "waterfall valley harbor harbour bridge castle cityscape desert canyon island garden park view".split()
    ),
    "style": set("style pattern texture wallpaper seamless abstract watercolor watercolour artstyle".split()),
}
_PREFIX = re.compile(
    r"^(?:(?:a|an|the)\s+)?(?:(?:stock|free|hd|high[- ]resolution|vintage|digital|royalty[- ]free)\s+)*"
    r"(?:photo(?:graph)?|picture|image|illustration|painting|drawing|render(?:ing)?|close[- ]?up|portrait|"
    r"vector|clipart|clip art|cartoon|sketch)s?(?:\s+(?:of|showing|with|depicting))?\s+",
    re.IGNORECASE,
)
_CUT = re.compile(
    r"\s*(?:[,;:|(\[]| - | – | on | in | at | near | during | while | for | from | by | against | under | "
    r"over | isolated | stock | royalty | sitting | standing | lying | leaning | walking | running | looking | "
    r"posing | flying | swimming | holding )\s*",
    re.IGNORECASE,
)


def extract_subject(caption: str, max_words: int = 10) -> str:
    """The caption's main noun phrase, heuristically: drop "a photo of"-style prefixes, cut at the
    first setting/preposition marker, keep at most ``max_words`` words."""
    text = " ".join(caption.split())
    for _ in range(2):  # "stock photo of a close-up of ..."
        text = _PREFIX.sub("", text, count=1)
    head = _CUT.split(text, maxsplit=1)[0].strip(" .!?-'\"")
    words = head.split()[:max_words] or caption.split()[:max_words]
    return " ".join(words)


def guess_kind(subject: str, caption: str) -> str:
    words = set(re.findall(r"[a-z']+", subject.casefold()))
    for kind in ("style", "character", "scene"):
        if words & _KIND_WORDS[kind]:
            return kind
    caption_words = set(re.findall(r"[a-z']+", caption.casefold()))
    if caption_words & _KIND_WORDS["style"] and "style" in caption_words:
        return "style"
    return "object"


def panel_positions(rows: int, cols: int) -> list[str]:
    if (rows, cols) == (2, 2):
        return ["top-left", "top-right", "bottom-left", "bottom-right"]
    if rows == 1:
        return ["left", "right"] if cols == 2 else ["left", "middle", "right"][:cols]
    if cols == 1:
        return ["top", "bottom"] if rows == 2 else ["top", "middle", "bottom"][:rows]
    return [f"row {r + 1} column {c + 1}" for r in range(rows) for c in range(cols)]


def panel_line(expression: str = "", pose: str = "", lighting: str = "", setting: str = "") -> str:
    return ", ".join(p.strip() for p in (expression, pose, lighting, setting) if p and p.strip())


def render_prompt(subject: str, kind: str, rows: int, cols: int, panels: list[str], template: str) -> str:
    positions = panel_positions(rows, cols)
    body = "; ".join(f"{pos}: {line}" for pos, line in zip(positions, panels, strict=True))
    return TEMPLATES[template].format(n=rows * cols, kind=kind, subject=subject, panels=body + ".")


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def prompt_id(caption_id: str, cfg: PromptsConfig) -> str:
    key = f"prompt|{caption_id}|{cfg.mode}|{cfg.seed}|{','.join(cfg.layouts)}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _record(pid: str, cap: dict[str, Any], subject: str, kind: str, layout: str, panels: list[str],
            template: str, source: str) -> dict[str, Any]:
    rows, cols = LAYOUTS[layout]
    return {
        "id": pid, "caption_id": cap["id"], "caption": cap["caption"], "subject": subject, "subject_kind": kind,
        "layout": layout, "rows": rows, "cols": cols, "panels": panels,
        "prompt": render_prompt(subject, kind, rows, cols, panels, template), "template": template, "source": source,
    }


def template_prompt(cap: dict[str, Any], cfg: PromptsConfig) -> dict[str, Any]:
    """Deterministic (per caption id and seed) grid prompt without an LLM."""
    rng = _rng("template", cfg.seed, cap["id"])
    subject = extract_subject(cap["caption"])
    kind = guess_kind(subject, cap["caption"])
    layout = cfg.layouts[rng.randrange(len(cfg.layouts))]
    rows, cols = LAYOUTS[layout]
    n = rows * cols
    var = _VARIATIONS[kind]

    def pick(options: list[str]) -> list[str]:
        return rng.sample(options, n) if len(options) >= n else [rng.choice(options) for _ in range(n)]

    expressions, poses, lights, settings = pick(var["expression"]), pick(var["pose"]), pick(_LIGHTING), pick(_SETTINGS)
    if kind in ("scene", "style"):
        settings = [""] * n  # a scene is its own setting; a style's panels vary the content instead
    panels = [panel_line(*parts) for parts in zip(expressions, poses, lights, settings, strict=True)]
    template = sorted(TEMPLATES)[rng.randrange(len(TEMPLATES))]
    return _record(prompt_id(cap["id"], cfg), cap, subject, kind, layout, panels, template, "template")


# ---------------------------------------------------------------- LLM mode
PROMPT_SYSTEM = (
    "You write prompts for a text-to-image model that draws a grid of panels showing the SAME subject "
    "(an object, a character, a scene or a style) with identical identity in every panel, varying only "
    "expression, pose or viewpoint, lighting and setting. Use the caption as a content reference: take its "
    "main subject and describe it precisely (colours, materials, distinctive features) so it can be drawn "
    "identically several times. Make each panel clearly different from the others."
)


def prompt_schema(layouts: tuple[str, ...]) -> dict[str, Any]:
    panel = {
        "type": "object",
        "properties": {k: {"type": "string"} for k in ("expression", "pose", "lighting", "setting")},
        "required": ["expression", "pose", "lighting", "setting"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "subject": {"type": "string"},
            "subject_kind": {"type": "string", "enum": list(SUBJECT_KINDS)},
            "layout": {"type": "string", "enum": list(layouts)},
            "panels": {"type": "array", "items": panel},
        },
        "required": ["subject", "subject_kind", "layout", "panels"],
        "additionalProperties": False,
    }


def llm_request(caption: str, cfg: PromptsConfig):
    from dsd.providers import ChatRequest

    sizes = ", ".join(f"{lay} ({LAYOUTS[lay][0] * LAYOUTS[lay][1]} panels)" for lay in cfg.layouts)
    prompt = (
        f"Caption: {caption}\n\nChoose a layout from: {sizes} (rows x columns). Return the subject (a short "
        "precise noun phrase), its kind (object, character, scene or style), the layout, and exactly one "
        "entry per panel in reading order with expression (empty for objects), pose or viewpoint, lighting "
        "and setting."
    )
    return ChatRequest(prompt=prompt, system=PROMPT_SYSTEM, json_schema=prompt_schema(cfg.layouts),
                       schema_name="grid_prompt", temperature=0.0, max_output_tokens=600)


def parse_llm_answer(cap: dict[str, Any], data: dict[str, Any] | None, cfg: PromptsConfig) -> dict[str, Any] | str:
    """The prompt record, or a reject reason when the answer is unusable."""
    if not isinstance(data, dict):
        return "malformed answer: not a JSON object"
    subject = str(data.get("subject") or "").strip()
    kind = data.get("subject_kind")
    layout = data.get("layout")
    panels = data.get("panels")
    if not subject:
        return "empty subject"
    if kind not in SUBJECT_KINDS:
        return f"unknown subject_kind {kind!r}"
    if layout not in LAYOUTS or layout not in cfg.layouts:
        return f"unknown layout {layout!r}"
    rows, cols = LAYOUTS[layout]
    if not isinstance(panels, list) or len(panels) != rows * cols:
        got = len(panels) if isinstance(panels, list) else f"{type(panels).__name__}, not a list"
        return f"panel count mismatch: layout {layout} needs {rows * cols}, got {got}"
    lines = []
    for p in panels:
        if not isinstance(p, dict):
            return "malformed panel entry"
        lines.append(panel_line(*(str(p.get(k) or "") for k in ("expression", "pose", "lighting", "setting"))))
    if not all(lines):
        return "empty panel description"
    template = sorted(TEMPLATES)[_rng("template-choice", cfg.seed, cap["id"]).randrange(len(TEMPLATES))]
    return _record(prompt_id(cap["id"], cfg), cap, subject, kind, layout, lines, template, "llm")


# ---------------------------------------------------------------- the stage
def dedup_text(record: dict[str, Any]) -> str:
    """What near-duplicate detection compares: the content, not the shared template words."""
    return f"{record['subject']} . " + " . ".join(record["panels"])


def _iter_captions(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        raise DatagenInputError(f"{path} does not exist: run the captions stage first")
    try:
        for n, rec in enumerate(iter_jsonl(path), 1):
            if not isinstance(rec.get("caption"), str) or "id" not in rec:
                raise DatagenInputError(f"{path}:{n}: a caption record needs 'id' and 'caption'")
            yield rec
    except ManifestError as exc:
        raise DatagenInputError(str(exc)) from exc


def run_prompts(
    cfg: PromptsConfig, captions_path: Path, out_dir: Path, *, llm=None, progress: bool = True
) -> StageSummary:
    """Write ``out_dir/prompts.jsonl`` (one grid prompt per caption); streams, resumable."""
    from tqdm import tqdm

    summary = StageSummary("prompts")
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.mode == "llm" and llm is None:
        raise DatagenInputError("prompts.mode = 'llm' needs an [llm] provider section (or use mode = 'template')")
    with (
        stage_provider(llm if cfg.mode == "llm" else None, out_dir / "llm_cache", summary) as provider,
        _PromptSink(cfg, out_dir, summary) as sink,
        tqdm(desc="prompts", unit="caption", disable=not progress, mininterval=0.5,
             total=_count_lines(captions_path)) as bar,
    ):
        _write_prompts(_iter_captions(captions_path), sink, provider, cfg, bar)
    summary.extra.update(_diversity(out_dir / "prompts.jsonl", cfg))
    return summary.stop()


class _PromptSink:
    """Where the stage's decisions go: the prompt and reject logs (resume), the near-duplicate
    filter, the cap and the summary."""

    def __init__(self, cfg: PromptsConfig, out_dir: Path, summary: StageSummary) -> None:
        out_path = out_dir / "prompts.jsonl"
        self.out = RecordLog(out_path, flush_every=256, ids_only=True)  # recovers a torn last line; keeps only ids
        self.dedup = NearDuplicateFilter(cfg.dedup_threshold, cfg.dedup_capacity) if cfg.dedup else None
        if self.dedup is not None:
            for rec in iter_jsonl(out_path):  # replay accepted prompts, in order: the filter's exact state
                self.dedup.add(dedup_text(rec))
        self.rejected = RecordLog(out_dir / "rejected.jsonl", flush_every=256)
        self.summary = summary
        self.errors = ItemErrors(summary)
        self.limit = cfg.max_prompts
        self.made = len(self.out)

    def __enter__(self) -> _PromptSink:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.errors.__exit__(exc_type)  # held rejects are written before the logs close
        self.out.close()
        self.rejected.close()

    def full(self) -> bool:
        return bool(self.limit) and self.made >= self.limit

    def decided_before(self, pid: str) -> bool:
        """True when an earlier run accepted or rejected ``pid``; counted again so the summary is whole."""
        return self.summary.count_earlier(pid, self.out, self.rejected) is not None

    def accept(self, rec: dict[str, Any] | str, cap: dict[str, Any], pid: str) -> None:
        """Log ``rec``, or its reject: ``rec`` is a reason string, or a near duplicate of an accepted prompt."""
        if not isinstance(rec, str) and self.dedup is not None and self.dedup.check_and_add(dedup_text(rec)):
            rec = "near duplicate"
        if isinstance(rec, str):
            self.rejected.append({"id": pid, "caption_id": cap["id"], "reason": rec})
            self.summary.reject(rec)
            return
        self.out.append(rec)
        self.made += 1
        self.summary.items_out += 1

    def make(self, pid: str, cap: dict[str, Any], step: str, build) -> None:
        """``accept(build())``; when ``build`` raises, the caption's reject through ``errors``."""
        try:
            rec = build()
        except Exception as exc:  # noqa: BLE001 - one caption's failure is its reject, not the stage's end
            self.errors.failed(pid, step, exc, lambda reason, _category: self.accept(reason, cap, pid))
            return
        self.accept(rec, cap, pid)


def _write_prompts(captions: Iterator[dict[str, Any]], sink: _PromptSink, provider, cfg: PromptsConfig, bar) -> None:
    """A prompt per caption until the cap: from the template at once, or from the LLM in chunks."""
    chunk: list[tuple[str, dict[str, Any]]] = []
    for cap in captions:
        if sink.full():
            break
        sink.summary.items_in += 1
        bar.update(1)
        pid = prompt_id(cap["id"], cfg)
        if sink.decided_before(pid):
            continue
        if provider is None:
            sink.make(pid, cap, "template", lambda cap=cap: template_prompt(cap, cfg))
            continue
        chunk.append((pid, cap))
        if len(chunk) >= cfg.llm_chunk:
            _run_llm_chunk(provider, chunk, cfg, sink)
            chunk = []
    if chunk and not sink.full():
        _run_llm_chunk(provider, chunk, cfg, sink)


def _run_llm_chunk(provider, chunk: list[tuple[str, dict[str, Any]]], cfg: PromptsConfig, sink: _PromptSink) -> None:
    results = dict(provider.map([llm_request(cap["caption"], cfg) for _, cap in chunk]))
    # Decide in caption order, so dedup and the cap give the same answer as any other run.
    for index, (pid, cap) in enumerate(chunk):
        if sink.full():
            return
        result = results[index]
        if isinstance(result, Exception):
            reason = settle_failure(result, sink.summary, "prompts stage")
            if reason is not None:
                sink.accept(reason, cap, pid)
            continue
        sink.make(pid, cap, "llm answer", lambda cap=cap, data=result.data: parse_llm_answer(cap, data, cfg))


def _diversity(path: Path, cfg: PromptsConfig) -> dict[str, float]:
    if not path.exists():
        return {}
    sample = Reservoir(cfg.diversity_sample, seed=cfg.seed)
    for rec in iter_jsonl(path):
        sample.add(dedup_text(rec))
    report = diversity_report(sample.items, seed=cfg.seed)
    return {f"diversity {k}": v for k, v in report.items()}


def _count_lines(path: Path) -> int | None:
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        return sum(buf.count(b"\n") for buf in iter(lambda: fh.read(1 << 20), b""))
