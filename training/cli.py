"""Command line: ``cache``, ``train``, ``export``, ``estimate``; each ends with a one-screen summary.

Flags, logging and exit codes are the shared ones of ``dsd/cli.py`` (-v/-vv/-q, ``--config`` +
``--set``, 2 = bad input or config, 130 = interrupted; a resumed ``train`` continues from its checkpoint).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dsd import cli
from dsd.cli_output import emit, table
from dsd.config import ConfigError
from dsd.weights.errors import WeightsError

from .config import TrainConfig, load_config

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description="DSD training (FLUX + condition embedder + LoRA)")
    cli.add_common_flags(p)
    sub = p.add_subparsers(dest="command", required=True)
    flags = cli.common_parent()

    def common(sp: argparse.ArgumentParser) -> None:
        cli.add_config_flags(sp, required=True, what="training TOML (see training/configs/)")
        sp.set_defaults(func=_run)

    sp = sub.add_parser("cache", parents=[flags], help="precompute VAE latents and text embeddings into dataset.cache_dir")
    common(sp)
    sp.add_argument("--device", default="auto")
    sp = sub.add_parser("train", parents=[flags], help="train (resumes from the latest checkpoint in saving.output_dir)")
    common(sp)
    sp.add_argument("--resume", default="auto", help="auto (default), none, or a checkpoint folder")
    sp = sub.add_parser("export", parents=[flags], help="checkpoint -> DSD adapter file (+ the authors' diffusers/PEFT layout)")
    common(sp)
    sp.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the latest in saving.output_dir)")
    sp.add_argument("--out", default=None, help="adapter file (default: <output_dir>/<saving.adapter_name>)")
    sp.add_argument("--release-dir", default=None, help="also write transformer/ + pytorch_lora_weights.safetensors here")
    sp.add_argument("--no-base", action="store_true", help="release layout without copying the base FLUX shards")
    sp.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                    help="export the EMA weights (--no-ema: the live ones; default: the EMA when the checkpoint has one, "
                         "as training's own adapter)")
    sp = sub.add_parser("estimate", parents=[flags], help="memory and time per step implied by a config")
    common(sp)
    sp.add_argument("--gpus", type=int, default=None, help="GPUs (default: training.gpus)")
    sp.add_argument("--mfu", type=float, default=0.35, help="assumed model FLOPs utilisation")
    sp.add_argument("--write", action="store_true", help="write <config>.estimate.md beside the config")
    return p


def _cache(cfg: TrainConfig, args: argparse.Namespace) -> None:
    import torch

    from .cache import run_cache

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    s = run_cache(cfg, device=device, progress=cli.progress_enabled(args))
    table("DSD cache", [
        ("cache dir", s.cache_dir), ("pairs", s.pairs), ("shards", f"{s.shards_total} ({s.shards_written} written, "
        f"{s.shards_skipped_done} already done)"), ("samples written", s.samples_written),
        ("unreadable images skipped", s.bad_images), ("seconds", f"{s.seconds:.1f}"),
        *([("entries per k references", ", ".join(f"k={k}: {n}" for k, n in s.references.items()))]
          if set(s.references) - {1} else []),
    ])  # fmt: skip


def _train(cfg: TrainConfig, args: argparse.Namespace) -> None:
    from .loop import train

    s = train(cfg, resume=args.resume, progress=cli.progress_enabled(args))
    if not s.is_main:  # under torchrun / accelerate every rank returns; one summary is enough
        return
    table("DSD training", [
        ("output dir", s.output_dir), ("resumed from", s.resumed_from or "-"),
        ("steps", f"{s.start_step} -> {s.start_step + s.steps_done}"),
        ("loss first / last", f"{s.first_loss:.4f} / {s.final_loss:.4f}"),
        ("pairs", s.samples), ("trainable parameters", f"{s.trainable_params:,}"),
        ("processes x accumulation", f"{s.world_size} x {s.grad_accumulation}"),
        ("seconds / step", f"{s.seconds_per_step:.3f}"), ("checkpoints written", ", ".join(s.checkpoints) or "-"),
        ("adapter", s.adapter),
    ])  # fmt: skip


def _export(cfg: TrainConfig, args: argparse.Namespace) -> None:
    from .checkpoint import CheckpointError, latest_checkpoint
    from .export import export_checkpoint

    ckpt = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(cfg.saving.output_dir)
    if ckpt is None:
        raise CheckpointError(f"no checkpoint in {cfg.saving.output_dir}/checkpoints; train first or pass --checkpoint")
    dest = Path(args.out) if args.out else Path(cfg.saving.output_dir) / cfg.saving.adapter_name
    s = export_checkpoint(cfg, ckpt, dest, release_dir=args.release_dir, include_base=not args.no_base, use_ema=args.ema)
    table("DSD export", [("checkpoint", ckpt), *s.items()])


def _estimate(cfg: TrainConfig, args: argparse.Namespace) -> None:
    from .estimate import estimate, render_markdown

    e = estimate(cfg, world_size=args.gpus, mfu=args.mfu)
    md = render_markdown(e, cfg, Path(args.config).name)
    if args.write:
        from dsd.io import atomic_write_text

        dest = Path(args.config).with_suffix("").with_suffix(".estimate.md")
        atomic_write_text(dest, md)
        emit(f"wrote {dest}")
    emit(md)


_COMMANDS = {"cache": _cache, "train": _train, "export": _export, "estimate": _estimate}


def _run(args: argparse.Namespace) -> int:
    _COMMANDS[args.command](load_config(args.config, args.overrides), args)
    return 0


def exit_codes() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(bad input or config -> 2, failures -> 1); see dsd/cli.py."""
    from .cache import CacheError
    from .checkpoint import CheckpointError
    from .data import DatasetError
    from .export import ExportError
    from .loop import OptionalDependencyError
    from .model import ModelLoadError

    # Every training error is one the user fixes (a config, a dataset, a checkpoint, a package).
    user = (ConfigError, DatasetError, CacheError, CheckpointError, ModelLoadError, ExportError, OptionalDependencyError,
            WeightsError, FileNotFoundError)  # fmt: skip
    return user, ()


def main(argv: list[str] | None = None) -> int:
    user, failures = exit_codes()
    return cli.run_cli(build_parser(), argv, user_errors=user, failures=failures)
