"""``dsd eval --protocol dreambench++``: DreamBench++'s own evaluation protocol, for numbers that can stand
next to their published tables. Our protocol (own judge prompts, aspect kept) stays the default.

What their code does (github.com/yuangpeng/dreambench_plus; read from a local checkout, ``--protocol-dir``,
nothing of theirs is copied into this repository), and what this mode does the same way:

* pictures: every reference and output is saved as JPEG at PIL's default quality (75: their
  ``save_image(..., "<i>_0.jpg")``) and read back (EXIF upright, alpha on white) before any scoring;
* the judge sees both JPEGs stretched to 512x512 (``.resize((512, 512))``) and re-encoded as JPEG (their
  ``encode_image_into_base64``), in their three-turn exchange: their user prompt, their assistant
  acknowledgement, then the images (CP: reference and output; PF: the prompt text and the output). The
  prompts are their files ``prompts/{user,gpt}_prompt_{subject,style,text}_full.txt`` (style subjects use
  the style pair for CP), at temperature 1; the answer is free text whose single ``Score: N`` (their regex)
  is the 0-4 score, divided by 4;
* embeddings: 100 x cosine of CLIP (openai/clip-vit-base-patch32), DINOv2 (facebook/dinov2-small) and
  DINOv1 (dino-vits8), from the folders the user gives; folders that are not those architectures, or a
  judge that is not gpt-4o-2024-05-13, make the table "non-protocol" (or an error with ``strict``).

Not the same: they average three runs (``full``, ``full2``, ``full3``) and re-ask an answer with no parsable
score up to 3 times with a fresh seed; here one run, and such an answer is recorded as a failure.
Their JSON outputs are written too (``<method>-<collection_id>-<prompt_index>.json`` per item and the
merged ``<method>.json``), so their ``benchmarking.py`` can read our scores.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..io import atomic_path, atomic_write_json
from ..providers import (
    ChatRequest,
    ChatResult,
    ProviderAuthError,
    ProviderRefusal,
    ProviderResponseError,
    Usage,
)
from .judge import Judge, JudgeConfigError, JudgeScore, JudgeUnavailable, _first_line, _mean_std
from .layout import Benchmark, BenchmarkError

NAME = "dreambench++"
JUDGE_MODEL = "gpt-4o-2024-05-13"
JPEG_QUALITY = 75  # PIL's default, what their save_image and encode_image_into_base64 write
JUDGE_SIDE = 512
SCORE = re.compile(r"(score|Score):\s*[a-zA-Z]*\s*(\d+)")  # their pattern, eval_concept_preservation.py
PROMPT_FILES = ("user_prompt_subject_full", "gpt_prompt_subject_full", "user_prompt_style_full", "gpt_prompt_style_full",
                "user_prompt_text_full", "gpt_prompt_text_full")  # fmt: skip
# (model_type, {config path: value}) of their models: openai/clip-vit-base-patch32, facebook/dinov2-small, dino-vits8
MODELS = {
    "clip": ("clip", {"vision_config.patch_size": 32, "vision_config.hidden_size": 768, "projection_dim": 512,
                      "vision_config.num_hidden_layers": 12}),
    "dino": ("dinov2", {"hidden_size": 384, "patch_size": 14, "num_hidden_layers": 12}),
    "dino_v1": ("vit", {"hidden_size": 384, "patch_size": 8, "num_hidden_layers": 12}),
}  # fmt: skip
CP_CATEGORIES = ("animal", "human", "object", "style")
PF_CATEGORIES = (("photorealistic", "Photorealistic"), ("stylized", "Style Transfer"), ("imaginative", "Imaginative"))


class ProtocolError(BenchmarkError):
    """The protocol cannot be followed as asked (missing checkout files, wrong benchmark, strict mismatch)."""


@dataclass(frozen=True)
class Prompts:
    """Their judge prompts: (user, assistant) turns per aspect."""

    subject: tuple[str, str]
    style: tuple[str, str]
    text: tuple[str, str]


def load_prompts(protocol_dir: Path) -> Prompts:
    """Their ``prompts/*.txt`` from a checkout (the repository root, its ``dreambench_plus/`` or the folder)."""
    root = Path(protocol_dir)
    folder = next((c for c in (root / "dreambench_plus" / "prompts", root / "prompts", root) if c.is_dir() and
                   (c / "user_prompt_subject_full.txt").is_file()), None)  # fmt: skip
    if folder is None:
        raise ProtocolError(f"{root}: no dreambench_plus/prompts/user_prompt_subject_full.txt; point --protocol-dir at a "
                            "checkout of github.com/yuangpeng/dreambench_plus")  # fmt: skip
    text = {}
    for name in PROMPT_FILES:
        path = folder / f"{name}.txt"
        if not path.is_file():
            raise ProtocolError(f"{path} is missing from the DreamBench++ checkout")
        text[name] = path.read_text(encoding="utf-8").strip()  # their f.read().strip()
    pair = lambda kind: (text[f"user_prompt_{kind}_full"], text[f"gpt_prompt_{kind}_full"])  # noqa: E731
    return Prompts(pair("subject"), pair("style"), pair("text"))


def check_models(folders: dict[str, Path | None], judge_model: str | None) -> list[str]:
    """Why this run is not the protocol's models (empty: it is)."""
    reasons = []
    for key, (kind, expected) in MODELS.items():
        folder = folders.get(key)
        if folder is None:
            reasons.append(f"no {key} folder (their table has the column)")
            continue
        try:
            config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            reasons.append(f"{key}: {Path(folder).name} has no readable config.json")
            continue
        got = {path: _dig(config, path) for path in expected}
        if config.get("model_type") != kind or got != expected:
            wrong = ", ".join(f"{p}={v}" for p, v in got.items() if v != expected[p])
            reasons.append(f"{key}: {Path(folder).name} is not their model ({config.get('model_type')}; {wrong})")
    if judge_model != JUDGE_MODEL:
        reasons.append(f"judge {judge_model or 'none'} (theirs: {JUDGE_MODEL})")
    return reasons


def _dig(config: dict, path: str) -> Any:
    for part in path.split("."):
        config = config.get(part, {}) if isinstance(config, dict) else {}
    return config if config != {} else None


# -- pictures -----------------------------------------------------------------------------------------
def resave(source: str | Path, dest: Path) -> Path:
    """``source`` read by the project's rule and saved as JPEG quality 75 at ``dest`` (kept if already there)."""
    from ..images import read_image

    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest, suffix=".jpg") as tmp:
            read_image(source).save(tmp, format="JPEG", quality=JPEG_QUALITY)
    return dest


def protocol_inputs(rows: list[dict[str, Any]], bench: Benchmark, folder: Path) -> tuple[list[dict[str, Any]], Benchmark]:
    """Rows and benchmark whose pictures are the JPEG re-saves (every stage then scores what they score)."""
    if bench.kind != "dreambench_plus":
        raise ProtocolError(f"--protocol {NAME} scores the DreamBench++ benchmark; {bench.root} is the {bench.kind} layout")
    subjects = {sid: replace(s, reference=resave(s.reference, folder / "references" / f"{sid}.jpg"))
                for sid, s in bench.subjects.items()}  # fmt: skip
    out = []
    for row in rows:
        dest = folder / row["system"] / row["subject"] / f"{Path(row['path']).stem}.jpg"
        out.append({**row, "path": str(resave(row["path"], dest)), "view": None})
    return out, Benchmark(bench.root, bench.kind, subjects, list(bench.prompts))


def judge_bytes(image) -> bytes:
    """Their upload: the picture stretched to 512x512, JPEG at PIL's default quality."""
    from PIL import Image

    from ..images import read_image

    img = read_image(image) if isinstance(image, str | Path) else Image.open(io.BytesIO(image)).convert("RGB")
    buf = io.BytesIO()
    img.resize((JUDGE_SIDE, JUDGE_SIDE)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


# -- the judge ----------------------------------------------------------------------------------------
class ProtocolJudge(Judge):
    """Their CP and PF requests and score parsing; scores are :class:`JudgeScore` like ours."""

    def __init__(self, provider, prompts: Prompts, style_references: Sequence[str] = ()) -> None:
        super().__init__(provider, repeats=1, temperature=1.0)
        self.prompts = prompts
        self._style_paths = {str(p) for p in style_references}
        self._style_bytes: set[bytes] = set()

    def encode(self, image) -> bytes:
        if isinstance(image, bytes):  # already an upload (score_many encodes a subject's reference once)
            return image
        data = judge_bytes(image)
        if isinstance(image, str | Path) and str(image) in self._style_paths:
            self._style_bytes.add(data)
        return data

    def requests(self, reference, output, prompt: str) -> list[tuple[str, ChatRequest]]:
        ref, out = self.encode(reference), self.encode(output)
        cp_turns = self.prompts.style if ref in self._style_bytes else self.prompts.subject
        common = dict(temperature=self.temperature, max_output_tokens=self.max_output_tokens)
        return [
            ("cp", ChatRequest(prompt="", images=(ref, out), history=(("user", cp_turns[0]), ("assistant", cp_turns[1])), **common)),
            ("pf", ChatRequest(prompt=prompt, images=(out,), history=(("user", self.prompts.text[0]),
                                                                      ("assistant", self.prompts.text[1])), **common)),
        ]  # fmt: skip

    def combine(self, answers: Sequence[tuple[str, ChatResult | BaseException]]) -> JudgeScore:
        runs: dict[str, list[int]] = {"cp": [], "pf": []}
        failures: list[str] = []
        usage = Usage()
        for aspect, answer in answers:
            if isinstance(answer, ProviderAuthError):
                raise JudgeConfigError(f"VLM judge: {answer}") from answer
            if isinstance(answer, ProviderRefusal | ProviderResponseError):
                failures.append(f"{aspect}: {_first_line(answer)}")
            elif isinstance(answer, BaseException):
                raise JudgeUnavailable(f"VLM judge: {_first_line(answer)}") from answer
            else:
                usage.add(answer.usage)
                found = [int(n) for _, n in SCORE.findall(answer.text or "")]
                if len(found) == 1 and 0 <= found[0] <= 4:
                    runs[aspect].append(found[0])
                else:
                    failures.append(f"{aspect}: {len(found)} 'Score: N' in the answer (their parser needs exactly one)")
        cp, cp_std = _mean_std(runs["cp"])
        pf, pf_std = _mean_std(runs["pf"])
        return JudgeScore(cp, pf, cp_std, pf_std, runs["cp"], runs["pf"], failures, usage)


# -- their outputs and their table --------------------------------------------------------------------
def method_name(system: str) -> str:
    return system.replace(" ", "_").replace("-", "_").lower()  # their merge_data / benchmarking naming


def collection_id(bench: Benchmark, subject: str) -> str:
    """Their ``{category}_{index}_{subject}`` (animal/human become live_subject_animal/_human)."""
    s = bench.subjects[subject]
    index = subject.split("_", 1)[1] if "_" in subject else subject
    category = f"live_subject_{s.category}" if s.category in ("animal", "human") else s.category
    return "_".join([category, index, s.name.lower().replace(" ", "_")])


def write_their_json(frame, bench: Benchmark, folder: Path) -> None:
    """``concept_preservation_full/`` and ``prompt_following_full/``: per item and merged, in their format."""
    for aspect, sub in (("cp", "concept_preservation_full"), ("pf", "prompt_following_full")):
        for system, group in frame[frame[aspect].notna()].groupby("system"):
            method = method_name(str(system))
            merged = {}
            for row in group.itertuples():
                cid, index = collection_id(bench, row.subject), int(str(row.prompt_id).lstrip("p"))
                score = int(round(getattr(row, aspect) * 4))
                atomic_write_json(folder / sub / method / f"{method}-{cid}-{index}.json",
                                  {"method": method, "collection_id": cid, "prompt_index": index, "score": score,
                                   "content": f"Score: {score}"})  # fmt: skip
                merged[f"{cid}-{index}"] = score
            atomic_write_json(folder / sub / f"{method}.json", dict(sorted(merged.items())))


def their_table(frame, reasons: list[str]) -> str:
    """Markdown in their benchmarking.py layout (CP per category, PF per prompt kind), plus 100 x cosine columns."""
    head = ["Method", "DINOv1", "DINOv2", "CLIP-I", "CLIP-T", *(c.title() for c in CP_CATEGORIES), "CP",
            *(label for _, label in PF_CATEGORIES), "PF", "CP * PF"]  # fmt: skip
    lines = [f"DreamBench++ protocol{'' if not reasons else ' (NON-PROTOCOL: ' + '; '.join(reasons) + ')'}",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for system, g in frame.groupby("system", sort=True):
        cells = [str(system)] + [_fmt(100 * g[m].mean()) if m in g else "-" for m in ("dino_v1", "dino", "clip_i", "clip_t")]
        cells += [_fmt(g[g.subject_category == c].cp.mean()) for c in CP_CATEGORIES] + [_fmt(g.cp.mean())]
        cells += [_fmt(g[g.prompt_category == c].pf.mean()) for c, _ in PF_CATEGORIES] + [_fmt(g.pf.mean())]
        cells.append(_fmt(g.cp.mean() * g.pf.mean()))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.3f}"


__all__ = ["NAME", "ProtocolError", "ProtocolJudge", "check_models", "load_prompts", "protocol_inputs", "their_table",
           "write_their_json"]  # fmt: skip
