"""`python -m datagen <stage>`: one subcommand per stage, `run` for all of them.

    python -m datagen run --config datagen/configs/example.toml --workdir W
    python -m datagen run --toy --workdir W                      # tiny offline demo
    python -m datagen prompts --config cfg.toml --workdir W --set prompts.mode=llm
    python -m datagen export-authors --workdir W --out X.parquet
    python -m datagen import-authors X.parquet --workdir W
    python -m datagen import-grids FOLDER --layout 2x2 --workdir W   # grids made elsewhere
    python -m datagen run --from panels --workdir W [--config cfg.toml]

Every stage resumes from its record log, so rerunning a killed command finishes the job.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from dsd.config import ConfigError, to_dict
from dsd.io import atomic_directory, atomic_write_json
from dsd.manifest import ManifestError

from . import cli_output
from .config import TOY_CONFIG, DatagenConfig, DatagenInputError, load_config
from .llm import LLMStageError
from .summary import StageSummary

logger = logging.getLogger(__name__)

STAGES = ("captions", "prompts", "teacher", "panels", "curate", "dataset")


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

    return run_curate(cfg.curate, w, vlm=cfg.vlm, progress=progress)


def _dataset(cfg: DatagenConfig, w: Path, progress: bool) -> StageSummary:
    from .dataset import run_dataset

    return run_dataset(cfg.dataset, w, progress=progress)


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

        cli_output.line(f"toy: writing a tiny random FLUX pipeline to {model_dir}")
        with atomic_directory(model_dir) as tmp:
            make_tiny_pipeline(tmp, seed=0)
    return dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, model_dir=str(model_dir)))


def _load(args: argparse.Namespace) -> tuple[DatagenConfig, Path]:
    if args.toy and args.config:
        raise ConfigError("give either --toy or --config, not both")
    path = TOY_CONFIG if args.toy else args.config
    cfg = load_config(path, args.set or [])
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # The resolved config for provenance; provider sections hold only the NAME of the key variable.
    atomic_write_json(workdir / "config.resolved.json", to_dict(cfg))
    return cfg, workdir


def _finish(stage: str, summary: StageSummary, workdir: Path) -> None:
    atomic_write_json(workdir / stage / "summary.json", summary.to_dict())
    cli_output.summary(summary)


def cmd_stage(args: argparse.Namespace) -> int:
    cfg, workdir = _load(args)
    stages = STAGES if args.command == "run" else (args.command,)
    if args.command == "run" and args.from_stage:
        stages = STAGES[STAGES.index(args.from_stage) :]
    if cfg.toy:
        cli_output.toy_banner()
    if "teacher" in stages:
        cfg = _prepare_toy(cfg, workdir)
    for stage in stages:
        logger.info("stage %s: start", stage)
        summary = RUNNERS[stage](cfg, workdir, not args.no_progress)
        _finish(stage, summary, workdir)
    if cfg.toy:
        cli_output.toy_banner()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .dataset import export_authors

    n = export_authors(Path(args.workdir), Path(args.out), progress=not args.no_progress)
    cli_output.line(f"exported {n} pairs to {args.out} (authors' layout: image=target, conditioning=reference, caption)")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .dataset import import_authors

    workdir = Path(args.workdir)
    summary = import_authors(Path(args.parquet), workdir, shard_size=args.shard_size, progress=not args.no_progress)
    _finish("dataset", summary, workdir)
    return 0


def cmd_import_grids(args: argparse.Namespace) -> int:
    from .import_grids import import_grids

    workdir = Path(args.workdir).resolve()
    summary = import_grids(Path(args.source), workdir, layout=args.layout, progress=not args.no_progress)
    atomic_write_json(workdir / "teacher" / "import_summary.json", summary.to_dict())
    cli_output.summary(summary)
    cli_output.line(f"next: python -m datagen run --from panels --workdir {workdir} [--config ...]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datagen", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workdir", required=True, help="work directory (all stage outputs and logs)")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    common.add_argument("-v", "--verbose", action="store_true")
    cfg_args = argparse.ArgumentParser(add_help=False)
    cfg_args.add_argument("--config", type=Path, help="TOML config (see datagen/configs/example.toml)")
    cfg_args.add_argument("--toy", action="store_true", help="use the shipped offline toy config (datagen/configs/toy.toml)")
    cfg_args.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
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


def _configure_logging(verbose: bool) -> None:
    """Default: warnings only, so a run shows its progress bars and summaries and nothing per request.
    ``-v``: our INFO lines too. Third-party INFO (HTTP clients log every request: the OpenAI SDK
    through ``httpx2``, older ones through ``httpx``) never reaches the terminal, whatever the
    library's logger is called."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.name.split(".")[0] in _OUR_LOGGERS)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True)
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "google_genai", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_OUR_LOGGERS = ("datagen", "dsd", "__main__")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return args.func(args)
    except (ConfigError, DatagenInputError, LLMStageError, ManifestError, FileNotFoundError, ValueError) as exc:
        logger.debug("failed", exc_info=True)
        cli_output.error(str(exc))
        return 2
    except KeyboardInterrupt:
        cli_output.error("interrupted; rerun the same command to resume")
        return 130
