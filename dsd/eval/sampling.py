"""Sampling a benchmark with the standalone DSD pipeline, sharded across processes, resumable.

One image per (system, subject, prompt, seed), drawn alone (batch 1) so the picture depends on
nothing but that item: the same files come out whatever the number of processes or the order of a
rerun. Launch one process per GPU with ``accelerate launch -m dsd eval ...`` (or torchrun):
accelerate's process state gives each process its index, and each item belongs to the process
``stable_hash(id) % num_processes``, as datagen's teacher shards its grids. A process writes the
PNG atomically, then appends its record to ``samples/<system>/samples.rank<r>.jsonl``; a rerun
skips ids found in any rank's log, so it may use another number of processes.

Each record carries frame one's reconstruction error: the mean squared error, in [0, 1] pixels,
between frame one of the decoded canvas and the reference as it was placed there (how well the
model read the reference; only DSD has it). With k references (``ModelSpec.references``, issue 20)
the sampler gets the subject's first k pictures as one list (a k + 1-frame canvas of the same frame
size) and the error is the mean over the k reconstructed frames.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import atomic_path, clean_stale_temporaries
from ..manifest import RecordLog, read_records
from .layout import Benchmark

logger = logging.getLogger(__name__)

VIEW_SIDE, VIEW_QUALITY = 512, 90  # the judge's defaults (dsd.eval.judge.Judge)


@dataclass(frozen=True)
class ModelSpec:
    """One system to sample: FLUX parts + the authors' release or a DSD adapter (a training checkpoint)."""

    name: str
    flux: Path
    release: Path | None = None
    adapter: Path | None = None
    step: int | None = None  # training step, for per-checkpoint curves
    plain_base: bool = False  # flux's transformer alone, zero embedder: the no-reference baseline
    references: int = 1  # the subject's first k pictures as references (system names carry "@k<k>" when k != 1)


@dataclass(frozen=True)
class SampleSettings:
    seeds: tuple[int, ...] = (0,)
    steps: int = 28
    guidance: float = 3.5
    image_guidance: float = 1.0
    text_guidance: float = 1.0
    negative_prompt: str = ""
    width: int = 1024
    height: int = 512
    fit: str = "crop"
    lora_scale: float = 1.0
    device: str = "auto"
    dtype: str = "auto"
    max_sequence_length: int | None = None  # T5 tokens; None: the adapter's training length, else 512


def checkpoint_step(path: Path) -> int | None:
    """The training step in a checkpoint's name (``step_000200.safetensors`` -> 200), else None."""
    found = re.findall(r"\d+", path.stem if path.suffix else path.name)
    return int(found[-1]) if found else None


def stable_shard(item_id: str, world: int) -> int:
    return int(hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:16], 16) % world


def sample_id(system: str, subject: str, prompt_id: str, seed: int) -> str:
    return f"{system}/{subject}/{prompt_id}_s{seed}"


def sample_logs(out_dir: Path, system: str) -> list[Path]:
    return sorted((Path(out_dir) / "samples" / system).glob("samples.rank*.jsonl"))


def read_samples(out_dir: Path, system: str) -> list[dict[str, Any]]:
    """Every finished sample of ``system`` over all rank logs (an id logged twice is read once)."""
    seen: dict[str, dict[str, Any]] = {}
    for log in sample_logs(out_dir, system):
        for rec in read_records(log):
            seen.setdefault(str(rec["id"]), rec)
    return [seen[k] for k in sorted(seen)]


def process_state(device: str = "auto") -> tuple[int, int, Any]:
    """(process index, number of processes, state) from accelerate (one process when not launched).

    Without a GPU (or with ``device="cpu"``) the processes meet over gloo: accelerate only treats a
    torchrun/accelerate launch as multi-process on the CPU when asked to."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu" or (device == "auto" and not torch.cuda.is_available()))
    return state.process_index, state.num_processes, state


def sample_system(
    spec: ModelSpec, bench: Benchmark, settings: SampleSettings, out_dir: Path, *, rank: int = 0, world: int = 1,
    progress: bool = True,
) -> int:  # fmt: skip
    """Draw this process's share of ``spec``'s images under ``out_dir/samples``; returns how many were drawn."""
    from tqdm import tqdm

    system_dir = Path(out_dir) / "samples" / spec.name
    system_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(system_dir)
    done = {str(r["id"]) for r in read_samples(out_dir, spec.name)}
    todo = [
        (p, seed) for p in bench.prompts for seed in settings.seeds
        if stable_shard(sample_id(spec.name, p.subject, p.id, seed), world) == rank
        and sample_id(spec.name, p.subject, p.id, seed) not in done
    ]  # fmt: skip
    if not todo:
        return 0
    pipe, layout, guidance = _load(spec, settings)
    references: dict[str, Any] = {}
    with RecordLog(system_dir / f"samples.rank{rank}.jsonl") as log:
        for prompt, seed in tqdm(todo, desc=f"sample {spec.name} r{rank}", unit="img", disable=not progress):
            if prompt.subject not in references:
                references[prompt.subject] = _subject_references(bench, prompt.subject, spec.references)
            reference = references[prompt.subject]
            result = pipe.generate(reference, prompt.text, settings.negative_prompt, layout=layout, steps=settings.steps,
                                   guidance=guidance, seed=seed, progress=False)  # fmt: skip
            rel = Path("samples") / spec.name / prompt.subject / f"{prompt.id}_s{seed}.png"
            _save(result.frame_two[0], Path(out_dir) / rel, Path(out_dir) / judge_view(rel))
            log.append({
                "id": sample_id(spec.name, prompt.subject, prompt.id, seed), "system": spec.name, "subject": prompt.subject,
                "prompt_id": prompt.id, "seed": seed, "path": rel.as_posix(), "references": spec.references,
                "recon_mse": _reconstruction(reference, result, layout),
            })  # fmt: skip
    return len(todo)


def _subject_references(bench: Benchmark, subject: str, k: int) -> Any:
    """One picture for k = 1 (today's call, bit for bit), else the list of the subject's first k pictures."""
    pictures = [_open_rgb(p) for p in bench.subjects[subject].references(k)]
    return pictures[0] if k == 1 else pictures


def _reconstruction(reference: Any, result, layout) -> float:
    """Frame one's reconstruction error; with k references the mean over the k reconstructed frames."""
    if not isinstance(reference, list):
        return reconstruction_error(reference, result.frame_one, layout)
    from ..pipeline import layout_for

    frames = layout_for(reference, layout)
    errors = [reconstruction_error(r, f, frames) for r, f in zip(reference, result.frames[: len(reference)], strict=True)]
    return sum(errors) / len(errors)


def _load(spec: ModelSpec, settings: SampleSettings):
    import torch

    from ..canvas import CanvasLayout
    from ..pipeline import DSDPipeline
    from ..sampler import GuidanceConfig

    if settings.device == "auto":
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(settings.device)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    dtype = dtypes.get(settings.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    pipe = DSDPipeline.from_local(spec.flux, release=spec.release, adapter=spec.adapter, lora_scale=settings.lora_scale,
                                  dtype=dtype, device=device, max_sequence_length=settings.max_sequence_length,
                                  plain_base=spec.plain_base)  # fmt: skip
    layout = CanvasLayout(height=settings.height, width=settings.width, fit=settings.fit)  # type: ignore[arg-type]
    guidance = GuidanceConfig(guidance=settings.guidance, image_guidance=settings.image_guidance,
                              text_guidance=settings.text_guidance)  # fmt: skip
    return pipe, layout, guidance


def reconstruction_error(reference: Any, frame_one, layout) -> float:
    """MSE in [0, 1] pixels between frame one and the reference as fitted into frame one."""
    from ..canvas import fit_reference, to_rgb01

    target = fit_reference(to_rgb01(reference), layout.height, layout.frame_width, layout.fit, layout.pad_value)
    return float(((frame_one.float().cpu() - target.float()) ** 2).mean())


def _open_rgb(path: Path):
    from ..images import read_image

    return read_image(path)


def judge_view(rel: Path) -> Path:
    """Where the judge's upload of a sample lives (``<out>/judge_views/...jpg``), outside ``samples/``."""
    return Path("judge_views", *rel.parts[1:]).with_suffix(".jpg")


def _save(image01, dest: Path, view: Path) -> None:
    """The PNG, and the judge's view of it (JPEG q90, long side <= 512): encoded now, while the image is in
    memory, so the judge sends file bytes instead of decoding and re-encoding every sample on its critical path."""
    from PIL import Image

    from ..canvas import tensor_to_pil

    image = tensor_to_pil(image01)
    small = image if max(image.size) <= VIEW_SIDE else image.copy()
    small.thumbnail((VIEW_SIDE, VIEW_SIDE), Image.Resampling.LANCZOS)
    with atomic_path(view, suffix=".jpg") as tmp:
        small.convert("RGB").save(tmp, format="JPEG", quality=VIEW_QUALITY)
    with atomic_path(dest, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
