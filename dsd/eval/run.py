"""``python -m dsd eval``: sample (or read) images for a benchmark, score them, write the report.

    out/
      samples/<system>/...            images drawn by --release / --adapter (+ per-rank record logs)
      scores/embeddings.jsonl         CLIP-I, CLIP-T, DINO per image (record log)
      scores/judge.jsonl              CP, PF (mean, spread, runs), failures, usage per image (record log)
      judge_cache/                    the judge's answers by content hash
      report/                         see dsd/eval/report.py
      eval.json                       the settings of the last run (never a key)

Every stage resumes from its log; ``kill -9`` and a rerun give the same final table. Sampling runs
in every process of an ``accelerate launch`` (each draws its share), the rest on the main process.

Multi-reference mode (issue 20): ``--references 1,2,3`` samples every model once per k with the first
k pictures of each subject as its references, as the system ``<name>@k<k>``; the scores table has a
``references`` column and the report a CP-per-k table (``--images NAME@k<k>=DIR`` labels outside
images the same way).
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import cli
from ..cli_output import emit
from ..io import atomic_write_json, atomic_write_text
from .layout import Benchmark, BenchmarkError, load_benchmark
from .sampling import ModelSpec, SampleSettings, checkpoint_step, process_state, sample_system
from .stages import ImageSource, build_table, collect_folder, collect_samples, embed_stage, judge_stage

logger = logging.getLogger(__name__)

JUDGE_DEFAULT_MODELS = {"gemini": "gemini-2.5-flash", "openai": "gpt-4o"}


@dataclass
class JudgeSettings:
    kind: str
    model: str
    base_url: str | None = None
    repeats: int = 1
    concurrency: int = 8
    temperature: float | None = None
    debiased: bool = False
    usd_per_mtok: tuple[float, float] = (0.0, 0.0)
    timeout_s: float = 120.0
    max_retries: int = 5


@dataclass
class EvalConfig:
    bench: Path
    out: Path
    layout: str = "auto"
    subjects: list[str] | None = None
    max_prompts: int | None = None
    references: tuple[int, ...] = (1,)  # --references: k values; each model is sampled once per k
    models: list[ModelSpec] = field(default_factory=list)
    sources: list[ImageSource] = field(default_factory=list)
    sampling: SampleSettings = field(default_factory=SampleSettings)
    clip: Path | None = None
    dino: Path | None = None
    dino_v1: Path | None = None
    embed_batch: int = 16
    judge: JudgeSettings | None = None
    pairwise: bool = False
    protocol: str | None = None
    protocol_dir: Path | None = None
    protocol_strict: bool = False
    title: str = "DSD evaluation"
    progress: bool = True


@dataclass
class EvalSummary:
    images: int = 0
    sampled: int = 0
    embedded: int = 0
    judged: int = 0
    judge_unavailable: int = 0
    judge_failures: int = 0
    usage: dict[str, Any] = field(default_factory=dict)
    pair_judged: int = 0
    pair_unavailable: int = 0
    pair_usage: dict[str, Any] = field(default_factory=dict)
    pairwise: dict[str, Any] | None = None
    protocol: str | None = None  # the label: the protocol's name, or "... NON-PROTOCOL: why"
    protocol_reasons: list[str] = field(default_factory=list)
    protocol_prompts: Any = None
    protocol_table: str | None = None
    report: Path | None = None
    table: Any = None
    main_process: bool = True


def run_eval(cfg: EvalConfig) -> EvalSummary:
    bench = load_benchmark(cfg.bench, cfg.layout).select(cfg.subjects, cfg.max_prompts)  # type: ignore[arg-type]
    _check_systems(cfg)
    if cfg.models:
        bench.check_references(max(m.references for m in cfg.models))
    summary = EvalSummary()
    if cfg.models:
        rank, world, state = process_state(cfg.sampling.device)
        # accelerate picked this process's GPU (LOCAL_RANK); "auto" means that one
        settings = replace(cfg.sampling, device=str(state.device)) if cfg.sampling.device == "auto" else cfg.sampling
        for spec in cfg.models:
            summary.sampled += sample_system(spec, bench, settings, cfg.out, rank=rank, world=world, progress=cfg.progress)
        state.wait_for_everyone()
        if not state.is_main_process:
            summary.main_process = False
            return summary
    rows = [r for spec in cfg.models for r in collect_samples(cfg.out, spec.name, spec.step)]
    rows += [r for source in cfg.sources for r in collect_folder(source, bench)]
    for row in rows:
        row["references"] = references_of(row["system"])
    summary.images = len(rows)
    scores_dir, report_dir = cfg.out / "scores", cfg.out / "report"
    if cfg.protocol:
        rows, bench = _protocol(cfg, rows, bench, summary)
        scores_dir, report_dir = cfg.out / "scores_dreambench_plus", cfg.out / "report_dreambench_plus"
    _score(cfg, rows, bench, scores_dir, summary)
    from .report import write_report

    meta = {**_meta(cfg, bench), **({"judge usage (this run)": summary.usage} if summary.usage else {}),
            **({"pairwise judge usage (this run)": summary.pair_usage} if summary.pair_usage else {})}  # fmt: skip
    meta["protocol"] = summary.protocol or "ours"  # the label, NON-PROTOCOL reasons included
    title = f"{cfg.title} ({summary.protocol})" if summary.protocol else cfg.title
    summary.report = write_report(summary.table, report_dir, title=title, meta=meta, pairwise=summary.pairwise)
    if cfg.protocol:
        from .protocol import their_table, write_their_json

        write_their_json(summary.table, bench, cfg.out / "dreambench_plus_outputs")
        summary.protocol_table = their_table(summary.table, summary.protocol_reasons)
        atomic_write_text(report_dir / "dreambench_plus_table.md", summary.protocol_table + "\n")
    return summary


def _protocol(cfg: EvalConfig, rows, bench: Benchmark, summary: EvalSummary):
    """DreamBench++'s protocol: their models or a "non-protocol" label, their JPEG re-saves of every picture."""
    from .protocol import NAME, ProtocolError, check_models, load_prompts, protocol_inputs

    if cfg.protocol_dir is None:
        raise ProtocolError(f"--protocol {NAME} reads its judge prompts from a DreamBench++ checkout: give --protocol-dir")
    summary.protocol_prompts = load_prompts(cfg.protocol_dir)
    folders = {"clip": cfg.clip, "dino": cfg.dino, "dino_v1": cfg.dino_v1}
    summary.protocol_reasons = check_models(folders, cfg.judge.model if cfg.judge else None)
    if summary.protocol_reasons and cfg.protocol_strict:
        raise ProtocolError(f"not the {NAME} protocol: " + "; ".join(summary.protocol_reasons))
    summary.protocol = NAME if not summary.protocol_reasons else f"{NAME}, NON-PROTOCOL: " + "; ".join(summary.protocol_reasons)
    return protocol_inputs(rows, bench, cfg.out / "protocol_jpeg")


def _score(cfg: EvalConfig, rows, bench: Benchmark, scores_dir: Path, summary: EvalSummary) -> None:
    if cfg.clip is not None or cfg.dino is not None or cfg.dino_v1 is not None:
        from .embeddings import EmbeddingModels

        models = EmbeddingModels.load(clip=cfg.clip, dino=cfg.dino, dino_v1=cfg.dino_v1, batch_size=cfg.embed_batch)
        summary.embedded = embed_stage(rows, bench, models, scores_dir, progress=cfg.progress)
    if cfg.judge is not None:
        _judge(cfg, rows, bench, scores_dir, summary)
    summary.table = build_table(rows, bench, scores_dir)
    if cfg.pairwise:
        from .pairwise import read_pairwise, summarise

        systems = sorted({r["system"] for r in rows})
        summary.pairwise = summarise(read_pairwise(scores_dir, systems), systems, summary.table)


def _check_systems(cfg: EvalConfig) -> None:
    names = [m.name for m in cfg.models] + [s.name for s in cfg.sources]
    if not names:
        raise BenchmarkError("nothing to score: give a model to sample (--flux with --release/--adapter) or --images")
    if cfg.pairwise and (cfg.judge is None or len(names) < 2):
        raise BenchmarkError("--pairwise compares systems with the judge: give --judge and at least two systems")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BenchmarkError(f"system name(s) {twice} given twice; name them apart with NAME=PATH")


def _judge(cfg: EvalConfig, rows, bench: Benchmark, scores_dir: Path, summary: EvalSummary) -> None:
    from ..providers import ProviderConfig, make_provider
    from .judge import Judge

    js = cfg.judge
    assert js is not None
    provider_cfg = ProviderConfig(
        kind=js.kind, model=js.model, base_url=js.base_url, max_concurrency=js.concurrency, timeout_s=js.timeout_s,
        max_retries=js.max_retries, cache_dir=str(cfg.out / "judge_cache"), input_usd_per_mtok=js.usd_per_mtok[0],
        output_usd_per_mtok=js.usd_per_mtok[1],
    )  # type: ignore[arg-type]  # fmt: skip
    with make_provider(provider_cfg) as provider:
        judge = Judge(provider, repeats=js.repeats, temperature=js.temperature, debiased=js.debiased)
        if summary.protocol_prompts is not None:
            from .protocol import ProtocolJudge

            styles = [str(s.reference) for s in bench.subjects.values() if s.category == "style"]
            judge = ProtocolJudge(provider, summary.protocol_prompts, styles)
        result = judge_stage(rows, bench, judge, scores_dir, progress=cfg.progress)
        pointwise = provider.usage
        summary.usage = pointwise.to_dict()
        if cfg.pairwise:
            from .pairwise import PairJudge, pairwise_stage

            pairs = pairwise_stage(rows, bench, PairJudge(provider, temperature=js.temperature), scores_dir,
                                   progress=cfg.progress)  # fmt: skip
            both = provider.usage.to_dict()
            summary.pair_usage = {k: v - pointwise.to_dict()[k] for k, v in both.items()}
            summary.pair_judged, summary.pair_unavailable = pairs.judged, pairs.unavailable
    summary.judged, summary.judge_unavailable, summary.judge_failures = result.judged, result.unavailable, result.failures


def _meta(cfg: EvalConfig, bench: Benchmark) -> dict[str, Any]:
    from ..config import to_dict

    judge = to_dict(cfg.judge) if cfg.judge else None
    return {
        "benchmark": str(bench.root), "layout": bench.kind, "subjects": len(bench.subjects), "prompts": len(bench.prompts),
        "systems": [m.name for m in cfg.models] + [s.name for s in cfg.sources],
        "sampling": to_dict(cfg.sampling) if cfg.models else None, "judge": judge,
        "clip": str(cfg.clip) if cfg.clip else None, "dino": str(cfg.dino) if cfg.dino else None,
        "dino_v1": str(cfg.dino_v1) if cfg.dino_v1 else None, "protocol": cfg.protocol,
        "references": list(cfg.references),
    }  # fmt: skip


# -- CLI --------------------------------------------------------------------------------------------
def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bench", required=True, type=Path, help="benchmark folder (our layout, DreamBench++ or DreamBench)")
    p.add_argument("--out", required=True, type=Path, help="work and report folder (rerun the same command to resume)")
    p.add_argument("--layout", choices=["auto", "dsd", "dreambench_plus", "dreambench"], default="auto")
    p.add_argument("--subjects", default=None, help="comma-separated subject ids (default: all)")
    p.add_argument("--max-prompts", type=int, default=None, help="at most this many prompts per subject")
    p.add_argument("--list", action="store_true", help="print the benchmark's image ids (subject/prompt id) and exit")
    p.add_argument("--images", action="append", default=[], metavar="[NAME=]DIR",
                   help="score images made elsewhere: DIR/<subject>/<prompt id>[_<anything>].png (repeatable)")
    p.add_argument("--flux", type=Path, help="diffusers FLUX.1-dev folder, to sample with --release / --adapter")
    p.add_argument("--release", action="append", default=[], metavar="[NAME=]DIR", help="the authors' DSD release folder")
    p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]FILE",
                   help="a DSD adapter or training checkpoint (repeatable: per-checkpoint curves from the step in its name)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one image per prompt and seed")
    p.add_argument("--references", default="1", metavar="K[,K...]",
                   help="multi-reference mode: sample each model with the first K pictures of every subject as its "
                        "references, once per K in the list (e.g. 1,2,3; systems named NAME@kK); CP per K in the report")
    p.add_argument("--base", action="append", default=[], metavar="NAME",
                   help="also sample --flux's own transformer with a zero embedder under NAME: the no-reference baseline")
    p.add_argument("--max-sequence-length", type=int, default=None,
                   help="T5 tokens when sampling (default: the adapter's training length, else 512; a mismatch warns)")
    for flag, kind, default in (("--steps", int, 28), ("--guidance", float, 3.5), ("--image-guidance", float, 1.0),
                                ("--text-guidance", float, 1.0), ("--width", int, 1024), ("--height", int, 512),
                                ("--lora-scale", float, 1.0)):  # fmt: skip
        p.add_argument(flag, type=kind, default=default, help=f"as in `dsd generate` (default {default})")
    p.add_argument("--fit", choices=["crop", "pad", "stretch"], default="crop")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--clip", type=Path, help="local CLIP folder (transformers layout): CLIP-I and CLIP-T")
    p.add_argument("--dino", type=Path, help="local DINOv2 folder (transformers layout): DINO")
    p.add_argument("--dino-v1", type=Path, help="local DINOv1 folder (transformers ViTModel, e.g. facebook/dino-vits8): "
                   "DreamBench++'s default DINO column, with its Resize(256) + CenterCrop(224)")
    p.add_argument("--embed-batch", type=int, default=16)
    p.add_argument("--judge", choices=["gemini", "openai"], help="VLM judge (keys from GEMINI_API_KEY / OPENAI_API_KEY)")
    p.add_argument("--judge-model", help="default gemini-2.5-flash / gpt-4o")
    p.add_argument("--judge-base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-repeats", type=int, default=1, help="independent judgements per image, averaged")
    p.add_argument("--judge-concurrency", type=int, default=8, help="judge requests in flight")
    p.add_argument("--judge-temperature", type=float, default=None, help="default 0 for one repeat, 0.7 for several")
    p.add_argument("--judge-debiased", action="store_true", help="the paper's debiased CP: copying the reference is penalised")
    p.add_argument("--judge-price", type=float, nargs=2, default=(0.0, 0.0), metavar=("IN", "OUT"),
                   help="USD per million input / output tokens, for the cost figure")
    p.add_argument("--pairwise", action="store_true",
                   help="also judge A/B pairs: both outputs of an item side by side, in both orders (Bradley-Terry ranking)")
    p.add_argument("--protocol", choices=["ours", "dreambench++"], default="ours",
                   help="dreambench++: their judge prompts (from --protocol-dir), JPEG q75 re-saves, 512x512 judge "
                        "views, 100 x cosine, their table and JSON files; labelled non-protocol unless their models")
    p.add_argument("--protocol-dir", type=Path, help="a local checkout of github.com/yuangpeng/dreambench_plus")
    p.add_argument("--protocol-strict", action="store_true", help="refuse (exit 2) instead of labelling non-protocol")
    p.add_argument("--title", default="DSD evaluation")


def _named(values: list[str], what: str) -> list[tuple[str, Path]]:
    out = []
    for value in values:
        name, sep, path = value.partition("=")
        out.append((name, Path(path)) if sep else (Path(value).stem or Path(value).name, Path(value)))
    for name, _ in out:
        if not name or "/" in name:
            raise BenchmarkError(f"{what} name {name!r} is empty or contains '/'")
    return out


REFERENCES_SUFFIX = re.compile(r"@k(\d+)$")


def parse_references(text: str) -> tuple[int, ...]:
    """``--references``: "3" or "1,2,3" -> sorted distinct k values, each 1 .. MAX_REFERENCES."""
    from ..canvas import MAX_REFERENCES

    values = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= MAX_REFERENCES:
            raise BenchmarkError(f"--references {text!r}: each value must be an integer from 1 to {MAX_REFERENCES}, "
                                 "e.g. --references 3 or --references 1,2,3")  # fmt: skip
        values.append(int(part))
    return tuple(sorted(set(values)))


def references_of(system: str) -> int:
    """The k of a system: its name's "@k<k>" suffix, else 1."""
    found = REFERENCES_SUFFIX.search(system)
    return int(found.group(1)) if found else 1


def per_k(models: list[ModelSpec], ks: tuple[int, ...]) -> list[ModelSpec]:
    """Each model once per k, named ``<name>@k<k>`` (unchanged when only k = 1 is asked: today's names and files)."""
    if ks == (1,):
        return models
    return [replace(m, name=f"{m.name}@k{k}", references=k) for m in models for k in ks]


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    models = []
    if (args.release or args.adapter) and args.flux is None:
        raise BenchmarkError("--release / --adapter need --flux (the FLUX.1-dev folder with VAE and text encoders)")
    for name, path in _named(args.release, "--release"):
        models.append(ModelSpec(name, args.flux, release=path))
    for name, path in _named(args.adapter, "--adapter"):
        models.append(ModelSpec(name, args.flux, adapter=path, step=checkpoint_step(path)))
    if args.base and args.flux is None:
        raise BenchmarkError("--base needs --flux (its transformer is the plain base)")
    models += [ModelSpec(name, args.flux, plain_base=True) for name in args.base]
    ks = parse_references(args.references)
    models = per_k(models, ks)
    sources = [ImageSource(name, path) for name, path in _named(args.images, "--images")]
    sampling = SampleSettings(
        seeds=tuple(args.seeds), steps=args.steps, guidance=args.guidance, image_guidance=args.image_guidance,
        text_guidance=args.text_guidance, negative_prompt=args.negative_prompt, width=args.width, height=args.height,
        fit=args.fit, lora_scale=args.lora_scale, device=args.device, dtype=args.dtype,
        max_sequence_length=args.max_sequence_length,
    )  # fmt: skip
    judge = None
    if args.judge:
        judge = JudgeSettings(args.judge, args.judge_model or JUDGE_DEFAULT_MODELS[args.judge], args.judge_base_url,
                              args.judge_repeats, args.judge_concurrency, args.judge_temperature, args.judge_debiased,
                              tuple(args.judge_price))  # fmt: skip
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()] if args.subjects else None
    return EvalConfig(bench=args.bench, out=args.out, layout=args.layout, subjects=subjects, max_prompts=args.max_prompts,
                      references=ks, models=models, sources=sources, sampling=sampling, clip=args.clip, dino=args.dino, dino_v1=args.dino_v1,
                      embed_batch=args.embed_batch, judge=judge, pairwise=args.pairwise,
                      protocol=None if args.protocol == "ours" else args.protocol, protocol_dir=args.protocol_dir,
                      protocol_strict=args.protocol_strict, title=args.title, progress=cli.progress_enabled(args))  # fmt: skip


def cmd_eval(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.list:
        bench = load_benchmark(cfg.bench, cfg.layout).select(cfg.subjects, cfg.max_prompts)  # type: ignore[arg-type]
        emit(f"{bench.kind} benchmark {bench.root}: {len(bench.subjects)} subjects, {len(bench.prompts)} prompts")
        for p in bench.prompts:
            emit(f"{p.key}\t{p.category}\t{p.text}")
        return 0
    t0 = time.perf_counter()
    summary = run_eval(cfg)
    if not summary.main_process:
        return 0
    atomic_write_json(cfg.out / "eval.json", _meta(cfg, load_benchmark(cfg.bench, cfg.layout)))
    _print_summary(summary, time.perf_counter() - t0)
    if summary.judge_unavailable or summary.pair_unavailable:
        emit(f"the judge left {summary.judge_unavailable} image(s) and {summary.pair_unavailable} pair(s) unscored "
             "(server unreachable); rerun the same command")  # fmt: skip
        return 1
    return 0


def _print_summary(summary: EvalSummary, seconds: float) -> None:
    emit(f"== dsd eval: {summary.images} images ({summary.sampled} sampled, {summary.embedded} embedded, "
         f"{summary.judged} judged) in {seconds:.1f}s ==")  # fmt: skip
    table = summary.table
    if table is not None and len(table):
        from .report import overall_text

        emit(overall_text(table, summary.pairwise))
    if summary.protocol_table:
        emit(summary.protocol_table)
    if summary.usage:
        u = summary.usage
        emit(f"judge: {u['requests']} requests, {u['cached']} cached, {u['retries']} retries, "
             f"{u['input_tokens']} in / {u['output_tokens']} out tokens, ${u['cost_usd']:.4f}; "
             f"{summary.judge_failures} image(s) with refused or malformed runs")  # fmt: skip
    if summary.pair_usage:
        u = summary.pair_usage
        emit(f"pairwise judge: {summary.pair_judged} pair(s) judged, {u['requests']} requests, {u['cached']} cached, "
             f"${u['cost_usd']:.4f}")  # fmt: skip
    emit(f"report: {summary.report}")
