"""``python -m datagen.teacher --prompts P --out D [--backend ...]``: the teacher stage on its own.

Multi-GPU: ``torchrun --nproc-per-node 8 -m datagen.teacher ...`` or
``accelerate launch -m datagen.teacher ...``; every process takes its share by RANK/WORLD_SIZE.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import tomllib

from dsd.config import ConfigError, apply_overrides, from_dict

from .. import cli_output
from .comfyui_backend import ComfyUIError, WorkflowTemplateError
from .config import TeacherConfig
from .diffusers_backend import TeacherModelError
from .sharding import ShardingError, merge_teacher_logs
from .stage import PromptFileError, run_teacher

_FLAGS = {
    "backend": str, "model_dir": str, "comfyui_url": str, "comfyui_workflow": str, "width": int, "height": int,
    "steps": int, "guidance": float, "batch_size": int, "seeds_per_prompt": int, "base_seed": int, "dtype": str,
    "device": str, "timeout_s": float,
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datagen.teacher", description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=Path, help="prompts.jsonl from the prompts stage")
    p.add_argument("--out", type=Path, required=True, help="output folder (grids/ and grids.jsonl)")
    p.add_argument("--config", type=Path, help="TOML file: a [teacher] table or top-level teacher keys")
    for name, tp in _FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=tp, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--world-size", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="draw at most this many grids (smoke runs)")
    p.add_argument("--merge-only", action="store_true", help="only merge grids.rank*.jsonl into grids.jsonl")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def load_config(args: argparse.Namespace) -> TeacherConfig:
    data: dict = {}
    if args.config:
        try:
            raw = tomllib.loads(args.config.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {args.config}: {exc}") from exc
        data = raw.get("teacher", raw) if isinstance(raw.get("teacher"), dict) else raw
    data = {**data, **{k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None}}
    cfg = from_dict(TeacherConfig, data, where=str(args.config or "teacher"))
    return apply_overrides(cfg, args.overrides) if args.overrides else cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.merge_only:
            dest = merge_teacher_logs(args.out)
            cli_output.line(f"merged rank logs into {dest}")
            return 0
        if args.prompts is None:
            cli_output.error("--prompts is required (unless --merge-only)")
            return 2
        cfg = load_config(args)
        summary = run_teacher(
            cfg, args.prompts, args.out, rank=args.rank, world_size=args.world_size,
            progress=not args.no_progress, limit=args.limit,
        )  # fmt: skip
    except (ConfigError, PromptFileError, ShardingError, TeacherModelError, ComfyUIError, WorkflowTemplateError, ValueError) as exc:
        cli_output.error(str(exc))
        return 1
    cli_output.line(summary.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
