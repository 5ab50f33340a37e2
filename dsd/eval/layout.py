"""Benchmark folders: subjects with reference images, and the prompts to draw each subject with.

Three layouts are read from local files (nothing is downloaded):

* ``dsd`` (ours)::

      bench/
        subjects/<subject>/ *.png|jpg|jpeg|webp   the first file by name is the reference
        subjects/<subject>/subject.json            optional: {"name": "...", "category": "...",
                                                   "judge_reference": "<file>"}
        prompts.jsonl                              {"prompt": "...", "subject": "<subject>", "category": "...", "id": "..."}
        (or prompts.txt: one prompt per line, for every subject)

  A prompt without ``subject`` applies to every subject; ``category`` defaults to ``default``;
  ``id`` (letters, digits, ``-_.``) defaults to ``p00``, ``p01``, ... in file order per subject.
  A subject's pictures, by name, are its references: ``--references K`` gives the first K of them
  (multi-reference DSD, issue 20). ``judge_reference`` names a picture that is scored against
  (CP, DINO, CLIP-I) and never given as a reference, e.g. the whole identity when each reference
  shows a part of it; without it the first picture is both.
* ``dreambench_plus`` (DreamBench++ as published): ``images/<category>/<n>.jpg`` and
  ``captions/<category>/<n>.txt`` whose first line names the subject and the next lines are its
  prompts (9: 4 photorealistic, 3 stylized, 2 imaginative, which become the prompt categories).
* ``dreambench`` (DreamBooth's ``dataset/`` folder): ``<subject>/*.jpg`` (4-6 photos each, all of them
  references in name order) plus
  ``prompts_and_classes.txt`` (its class list and the 25 object / 25 live-subject prompt templates;
  the rare token is dropped, since DSD needs no per-subject token).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

LayoutKind = Literal["auto", "dsd", "dreambench_plus", "dreambench"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DREAMBENCH_PLUS_PROMPT_KINDS = ("photorealistic",) * 4 + ("stylized",) * 3 + ("imaginative",) * 2
DREAMBENCH_LIVE_CLASSES = {"cat", "dog"}


class BenchmarkError(ValueError):
    """A benchmark folder that cannot be read; the message says what is missing and which layouts exist."""


@dataclass(frozen=True)
class Subject:
    id: str
    reference: Path  # what outputs are scored against (the first picture unless judge_reference names one)
    name: str = ""
    category: str = "default"
    pictures: tuple[Path, ...] = ()  # the references in order (empty: just ``reference``)

    def references(self, k: int) -> list[Path]:
        """The first ``k`` pictures (``--references k``)."""
        pictures = self.pictures or (self.reference,)
        if k > len(pictures):
            raise BenchmarkError(f"subject {self.id!r} has {len(pictures)} picture(s); {k} references asked")
        return list(pictures[:k])


@dataclass(frozen=True)
class PromptSpec:
    subject: str
    id: str
    text: str
    category: str = "default"

    @property
    def key(self) -> str:
        return f"{self.subject}/{self.id}"


@dataclass
class Benchmark:
    root: Path
    kind: str
    subjects: dict[str, Subject] = field(default_factory=dict)
    prompts: list[PromptSpec] = field(default_factory=list)

    def select(self, subjects: list[str] | None = None, max_prompts: int | None = None) -> Benchmark:
        """A subset: only ``subjects`` (ids), at most ``max_prompts`` prompts per subject."""
        if subjects:
            unknown = sorted(set(subjects) - set(self.subjects))
            if unknown:
                raise BenchmarkError(f"{self.root}: no subject(s) {unknown}; known: {sorted(self.subjects)}")
        keep = {s: self.subjects[s] for s in (subjects or self.subjects)}
        per: dict[str, int] = {}
        prompts = []
        for p in self.prompts:
            if p.subject in keep and (max_prompts is None or per.get(p.subject, 0) < max_prompts):
                per[p.subject] = per.get(p.subject, 0) + 1
                prompts.append(p)
        return Benchmark(self.root, self.kind, keep, prompts)

    def check_references(self, k: int) -> None:
        """Every subject has at least ``k`` pictures to give as references, else a BenchmarkError naming those short."""
        short = sorted(f"{s.id} ({len(s.pictures or (s.reference,))})" for s in self.subjects.values()
                       if len(s.pictures or (s.reference,)) < k)  # fmt: skip
        if short:
            raise BenchmarkError(
                f"{self.root}: --references {k} needs {k} pictures per subject; {len(short)} subject(s) have fewer: "
                f"{', '.join(short[:8])}{' ...' if len(short) > 8 else ''} (leave them out with --subjects)"
            )


def load_benchmark(root: str | Path, kind: LayoutKind = "auto") -> Benchmark:
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"benchmark folder {root} does not exist")
    if kind == "auto":
        kind = detect_layout(root)
    bench = {"dsd": _load_dsd, "dreambench_plus": _load_dreambench_plus, "dreambench": _load_dreambench}[kind](root)
    if not bench.subjects or not bench.prompts:
        raise BenchmarkError(f"{root}: the {kind} layout holds {len(bench.subjects)} subjects and {len(bench.prompts)} prompts")
    return bench


def detect_layout(root: Path) -> str:
    if (root / "subjects").is_dir() and ((root / "prompts.jsonl").is_file() or (root / "prompts.txt").is_file()):
        return "dsd"
    if (root / "images").is_dir() and (root / "captions").is_dir():
        return "dreambench_plus"
    if (root / "prompts_and_classes.txt").is_file() or (root / "dataset" / "prompts_and_classes.txt").is_file():
        return "dreambench"
    raise BenchmarkError(
        f"{root} is not a benchmark folder: expected subjects/ + prompts.jsonl (our layout), images/ + captions/ "
        "(DreamBench++) or prompts_and_classes.txt (DreamBench); see `python -m dsd eval --help`"
    )


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _check_id(value: str, what: str, where: Path) -> str:
    if not _SAFE_ID.match(value):
        raise BenchmarkError(f"{where}: {what} {value!r} must be letters, digits, '-', '_' or '.' (it names files)")
    return value


def _load_dsd(root: Path) -> Benchmark:
    bench = Benchmark(root, "dsd")
    for folder in sorted(p for p in (root / "subjects").iterdir() if p.is_dir()):
        images = _images(folder)
        if not images:
            raise BenchmarkError(f"{folder}: no reference image ({', '.join(IMAGE_SUFFIXES)})")
        meta: dict = {}
        if (folder / "subject.json").is_file():
            meta = json.loads((folder / "subject.json").read_text(encoding="utf-8"))
        sid = _check_id(folder.name, "subject folder", folder)
        judge, pictures = _judge_reference(folder, images, meta.get("judge_reference"))
        bench.subjects[sid] = Subject(sid, judge, str(meta.get("name", sid)), str(meta.get("category", "default")),
                                      tuple(pictures))  # fmt: skip
    for i, rec in enumerate(_read_prompt_lines(root)):
        targets = [rec["subject"]] if rec.get("subject") else list(bench.subjects)
        for sid in targets:
            if sid not in bench.subjects:
                raise BenchmarkError(f"{root}: prompt {i + 1} names subject {sid!r}, which has no folder under subjects/")
            n = sum(1 for p in bench.prompts if p.subject == sid)
            pid = _check_id(str(rec.get("id") or f"p{n:02d}"), "prompt id", root)
            bench.prompts.append(PromptSpec(sid, pid, str(rec["prompt"]), str(rec.get("category") or "default")))
    _check_unique(bench)
    return bench


def _judge_reference(folder: Path, images: list[Path], name: object) -> tuple[Path, list[Path]]:
    """(the picture scored against, the references): subject.json's ``judge_reference`` is kept out of the references."""
    if not name:
        return images[0], images
    judge = folder / str(name)
    if judge not in images:
        raise BenchmarkError(f"{folder / 'subject.json'}: judge_reference {name!r} is not a picture in {folder}")
    pictures = [p for p in images if p != judge]
    if not pictures:
        raise BenchmarkError(f"{folder}: only the judge_reference picture; a subject needs a reference besides it")
    return judge, pictures


def _read_prompt_lines(root: Path) -> list[dict]:
    if (root / "prompts.jsonl").is_file():
        path = root / "prompts.jsonl"
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchmarkError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
            if not isinstance(rec, dict) or not str(rec.get("prompt", "")).strip():
                raise BenchmarkError(f"{path}:{n}: each line needs a non-empty \"prompt\"")
            out.append(rec)
        return out
    lines = (root / "prompts.txt").read_text(encoding="utf-8").splitlines()
    return [{"prompt": line.strip()} for line in lines if line.strip()]


def _check_unique(bench: Benchmark) -> None:
    seen: set[str] = set()
    for p in bench.prompts:
        if p.key in seen:
            raise BenchmarkError(f"{bench.root}: prompt id {p.id!r} is used twice for subject {p.subject!r}")
        seen.add(p.key)


def _load_dreambench_plus(root: Path) -> Benchmark:
    bench = Benchmark(root, "dreambench_plus")
    for caption in sorted((root / "captions").rglob("*.txt")):
        category, index = caption.parent.name, caption.stem
        candidates = [root / "images" / category / f"{index}{s}" for s in IMAGE_SUFFIXES]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise BenchmarkError(f"{caption}: no image images/{category}/{index}.jpg beside it")
        lines = [line.strip() for line in caption.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(lines) < 2:
            raise BenchmarkError(f"{caption}: the first line names the subject, the next lines are prompts")
        sid = _check_id(f"{category}_{index}", "subject", caption)
        bench.subjects[sid] = Subject(sid, image, lines[0], category)
        kinds = DREAMBENCH_PLUS_PROMPT_KINDS if len(lines) - 1 == len(DREAMBENCH_PLUS_PROMPT_KINDS) else ()
        for k, text in enumerate(lines[1:]):
            bench.prompts.append(PromptSpec(sid, f"p{k}", text, kinds[k] if kinds else "default"))
    return bench


def _load_dreambench(root: Path) -> Benchmark:
    data = root if (root / "prompts_and_classes.txt").is_file() else root / "dataset"
    text = (data / "prompts_and_classes.txt").read_text(encoding="utf-8")
    if "Object Prompts" not in text or "Live Subject Prompts" not in text:
        raise BenchmarkError(f"{data / 'prompts_and_classes.txt'}: no 'Object Prompts' / 'Live Subject Prompts' sections")
    classes = dict(re.findall(r"^([A-Za-z0-9_]+),([A-Za-z ]+)$", text.split("Prompts", 1)[0], flags=re.M))
    classes.pop("subject_name", None)
    head, live = text.split("Live Subject Prompts", 1)
    templates = {
        "object": re.findall(r"'([^']*\{0\}[^']*)'", head.split("Object Prompts", 1)[1]),
        "live_subject": re.findall(r"'([^']*\{0\}[^']*)'", live),
    }
    bench = Benchmark(root, "dreambench")
    for sid, cls in sorted(classes.items()):
        folder = data / sid
        images = _images(folder) if folder.is_dir() else []
        if not images:
            raise BenchmarkError(f"{folder}: no images for subject {sid!r} listed in prompts_and_classes.txt")
        kind = "live_subject" if cls.strip() in DREAMBENCH_LIVE_CLASSES else "object"
        bench.subjects[sid] = Subject(sid, images[0], cls.strip(), kind, tuple(images))
        for k, template in enumerate(templates[kind]):
            prompt = " ".join(template.format("", cls.strip()).split())
            bench.prompts.append(PromptSpec(sid, f"p{k:02d}", prompt, kind))
    return bench
