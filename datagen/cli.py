"""`python -m datagen <stage>`: one subcommand per stage, `run` for all of them.

    python -m datagen run --config datagen/configs/example.toml --workdir W
    python -m datagen run --toy --workdir W                      # tiny offline demo
    python -m datagen prompts --config cfg.toml --workdir W --set prompts.mode=llm
    python -m datagen export-authors --workdir W --out X.parquet
    python -m datagen import-authors X.parquet --workdir W
    python -m datagen import-grids FOLDER --layout 2x2 --workdir W   # grids made elsewhere
    python -m datagen run --from panels --workdir W [--config cfg.toml]

Every stage resumes from its record log, so rerunning a killed command finishes the job. Flags,
logging and exit codes are the shared ones of ``dsd/cli.py`` (-v/-vv/-q, 2 = bad input or config,
1 = a provider or the teacher failed, 130 = interrupted).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from dsd import cli
from dsd.cli_output import emit
from dsd.config import ConfigError, to_dict
from dsd.io import atomic_directory, atomic_write_json
from dsd.manifest import ManifestError

from .config import TOY_CONFIG, DatagenConfig, DatagenInputError, load_config
from .llm import LLMStageError
from .summary import StageSummary

logger = logging.getLogger(__name__)

STAGES = ("captions", "prompts", "teacher", "panels", "curate", "dataset")
TOY_BANNER = (
    "*** TOY RUN: tiny random teacher, offline templates, curation skipped unless a vlm is configured. "
    "The output only exercises the pipeline; it is NOT a training dataset. ***"
)


# ---------------------------------------------------------------- stage runners
def _captions(cfg: DatagenConfig, w: Path, progress: bool) -> StageSummary:
    from .captions import run_captions

    return run_captions(cfg.captions, w / "captions", llm=cfg.llm, progress=progress)


def _prompts(cfg: DatagenConfig, w: Path, progress: bool) -> StageSummary:
    from .prompts import run_prompts

    return run_prompts(cfg.prompts, w / "captions" / "captions.jsonl", w / "prompts", llm=cfg.llm, progress=progress)


def _teacher(cfg: DatagenConfig, w: Path, progress: bool) -> StageSummary:
    from .teacher.stage import run_teacher  # torch/diffusers only when this stage runs

    return run_teacher(cfg.teacher, w / "prompts" / "prompts.jsonl", w / "teacher", progress=progress)


def _panels(cfg: DatagenConfig, w: Path, progress: bool) -> StageSummary:
    from .curate import panel_encoding
    from .panels import run_panels

    # Curation will upload every panel: encode its view now, while the panel is in memory.
    view = panel_encoding(cfg.curate) if cfg.vlm is not None else None
    return run_panels(cfg.panels, w / "teacher" / "grids.jsonl", w / "panels", progress=progress, vlm_view=view)


def _curate(cfg: DatagenConfig, w: Path, progress: bool) -> StageSummary:
    from .curate import run_curate

    return run_curate(cfg.curate, w, vlm=cfg.vlm, progress=progress, max_references=cfg.dataset.max_references)


def _dataset(cfg: DatagenConfig, w: Path, progress: bool) -> StageSummary:
    from .dataset import run_dataset
    from .tuples import effective_mode

    return run_dataset(cfg.dataset, w, progress=progress, tuple_verdicts=effective_mode(cfg.curate, cfg.vlm))


RUNNERS: dict[str, Callable[[DatagenConfig, Path, bool], StageSummary]] = {
    "captions": _captions, "prompts": _prompts, "teacher": _teacher,
    "panels": _panels, "curate": _curate, "dataset": _dataset,
}  # fmt: skip


# ---------------------------------------------------------------- setup
def _prepare_toy(cfg: DatagenConfig, workdir: Path) -> DatagenConfig:
    """The toy draws with a tiny random FLUX made once inside the workdir."""
    if not cfg.toy or cfg.teacher.model_dir is not None:
        return cfg
    model_dir = workdir / "toy_model"
    if not (model_dir / "dsd_tiny.json").is_file():
        from dsd.tiny import make_tiny_pipeline

        emit(f"toy: writing a tiny random FLUX pipeline to {model_dir}")
        with atomic_directory(model_dir) as tmp:
            make_tiny_pipeline(tmp, seed=0)
    return dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, model_dir=str(model_dir)))


def _load(args: argparse.Namespace) -> tuple[DatagenConfig, Path]:
    if args.toy and args.config:
        raise ConfigError("give either --toy or --config, not both")
    path = TOY_CONFIG if args.toy else args.config
    cfg = load_config(path, args.overrides)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # The resolved config for provenance; provider sections hold only the NAME of the key variable.
    atomic_write_json(workdir / "config.resolved.json", to_dict(cfg))
    return cfg, workdir


def _finish(stage: str, summary: StageSummary, workdir: Path) -> None:
    atomic_write_json(workdir / stage / "summary.json", summary.to_dict())
    emit(summary.render())


def cmd_stage(args: argparse.Namespace) -> int:
    cfg, workdir = _load(args)
    stages = STAGES if args.command == "run" else (args.command,)
    if args.command == "run" and args.from_stage:
        stages = STAGES[STAGES.index(args.from_stage) :]
    if cfg.toy:
        emit(TOY_BANNER)
    if "teacher" in stages:
        cfg = _prepare_toy(cfg, workdir)
    for stage in stages:
        logger.info("stage %s: start", stage)
        summary = RUNNERS[stage](cfg, workdir, cli.progress_enabled(args))
        _finish(stage, summary, workdir)
    if cfg.toy:
        emit(TOY_BANNER)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .dataset import export_authors

    n = export_authors(Path(args.workdir), Path(args.out), progress=cli.progress_enabled(args))
    emit(f"exported {n} pairs to {args.out} (authors' layout: image=target, conditioning=reference, caption)")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .dataset import import_authors

    workdir = Path(args.workdir)
    summary = import_authors(Path(args.parquet), workdir, shard_size=args.shard_size, progress=cli.progress_enabled(args))
    _finish("dataset", summary, workdir)
    return 0


def cmd_import_grids(args: argparse.Namespace) -> int:
    from .import_grids import import_grids

    workdir = Path(args.workdir).resolve()
    summary = import_grids(Path(args.source), workdir, layout=args.layout, progress=cli.progress_enabled(args))
    atomic_write_json(workdir / "teacher" / "import_summary.json", summary.to_dict())
    emit(summary.render())
    emit(f"next: python -m datagen run --from panels --workdir {workdir} [--config ...]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datagen", description=__doc__.split("\n\n")[0])
    cli.add_common_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    common = cli.common_parent()
    common.add_argument("--workdir", required=True, help="work directory (all stage outputs and logs)")
    cfg_args = argparse.ArgumentParser(add_help=False)
    cli.add_config_flags(cfg_args, what="TOML config (see datagen/configs/example.toml)")
    cfg_args.add_argument("--toy", action="store_true", help="use the shipped offline toy config (datagen/configs/toy.toml)")
    helps = {
        "captions": "read, filter, sample and dedup captions",
        "prompts": "turn captions into grid prompts (LLM or templates)",
        "teacher": "draw the grids with the teacher model",
        "panels": "cut grids into panels and pairs",
        "curate": "VLM verdict + caption per pair",
        "dataset": "write webdataset shards + parquet index",
        "run": "all stages in order",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, parents=[common, cfg_args], help=text)
        p.set_defaults(func=cmd_stage, from_stage=None)
        if name == "run":
            p.add_argument("--from", dest="from_stage", choices=STAGES,
                           help="start at this stage (e.g. panels after import-grids)")
    p = sub.add_parser("import-grids", parents=[common],
                       help="bring grids made elsewhere into the pipeline (then: run --from panels)")
    p.add_argument("source", type=Path, help="a folder of images, or a manifest (.jsonl or .csv: path, layout[, id, prompt])")
    p.add_argument("--layout", help="rows x cols of every grid, e.g. 2x2 (a manifest's own layout column wins)")
    p.set_defaults(func=cmd_import_grids)
    p = sub.add_parser("export-authors", parents=[common], help="write the dataset in the authors' parquet layout")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("import-authors", parents=[common], help="turn an authors'-layout parquet into our dataset")
    p.add_argument("parquet", type=Path)
    p.add_argument("--shard-size", type=int, default=1000)
    p.set_defaults(func=cmd_import)
    return parser


def exit_codes() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(bad input or config -> 2, failures of a provider or the teacher -> 1) for every datagen CLI."""
    from dsd.providers import ProviderError

    from .panels import LayoutError
    from .teacher.comfyui_backend import ComfyUIError, WorkflowTemplateError
    from .teacher.diffusers_backend import TeacherModelError
    from .teacher.sharding import ShardingError
    from .teacher.stage import PromptFileError

    user = (ConfigError, DatagenInputError, ManifestError, FileNotFoundError, LayoutError, PromptFileError, ShardingError,
            WorkflowTemplateError)  # fmt: skip
    return user, (LLMStageError, ProviderError, TeacherModelError, ComfyUIError)


def main(argv: list[str] | None = None) -> int:
    user, failures = exit_codes()
    return cli.run_cli(build_parser(), argv, user_errors=user, failures=failures)
