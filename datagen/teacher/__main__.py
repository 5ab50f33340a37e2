"""``python -m datagen.teacher --prompts P --out D [--backend ...]``: the teacher stage on its own.

``--config`` reads the ``[teacher]`` table of a datagen config file (a full one works; its other
sections are checked too). Every field of ``TeacherConfig`` is also a flag (``--steps 4``,
``--model-dir DIR``), generated from the dataclass; ``--set teacher.KEY=VALUE`` works as in datagen.

Multi-GPU: ``torchrun --nproc-per-node 8 -m datagen.teacher ...`` or
``accelerate launch -m datagen.teacher ...``; every process takes its share by RANK/WORLD_SIZE.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dsd import cli
from dsd.cli_output import emit
from dsd.config import ConfigError

from ..cli import exit_codes
from ..config import load_config
from .config import TeacherConfig
from .sharding import merge_teacher_logs
from .stage import run_teacher


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m datagen.teacher", description=__doc__.splitlines()[0])
    cli.add_common_flags(p)
    p.add_argument("--prompts", type=Path, help="prompts.jsonl from the prompts stage")
    p.add_argument("--out", type=Path, required=True, help="output folder (grids/ and grids.jsonl)")
    cli.add_config_flags(p, what="datagen TOML config; its [teacher] table is used")
    cli.add_field_flags(p, TeacherConfig, section="teacher")
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--world-size", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="draw at most this many grids (smoke runs)")
    p.add_argument("--merge-only", action="store_true", help="only merge grids.rank*.jsonl into grids.jsonl")
    p.set_defaults(func=cmd_teacher)
    return p


def load_teacher_config(args: argparse.Namespace) -> TeacherConfig:
    values = cli.field_overrides(args, TeacherConfig, section="teacher")
    return load_config(args.config, args.overrides, values=values).teacher


def cmd_teacher(args: argparse.Namespace) -> int:
    if args.merge_only:
        emit(f"merged rank logs into {merge_teacher_logs(args.out)}")
        return 0
    if args.prompts is None:
        raise ConfigError("--prompts is required (unless --merge-only)")
    summary = run_teacher(
        load_teacher_config(args), args.prompts, args.out, rank=args.rank, world_size=args.world_size,
        progress=cli.progress_enabled(args), limit=args.limit,
    )  # fmt: skip
    emit(summary.render())
    return 0


def main(argv: list[str] | None = None) -> int:
    user, failures = exit_codes()
    return cli.run_cli(build_parser(), argv, user_errors=user, failures=failures)


if __name__ == "__main__":
    sys.exit(main())
