"""Issue 19's ablations: which parts of the paper's recipe matter, on the toy loop.

    python -m benchmarks.toy_ablations --loop DIR [--only NAME ...]

``DIR`` is a finished ``python -m benchmarks.toy_loop`` folder (its base, dataset and held-out benchmark).
Each ablation is one more ``python -m training`` run from the same base with one change, its best step
(the toy judge's validation) evaluated by ``python -m dsd eval`` on the loop's benchmark:

* ``recipe``: no change (with ``--steps``: the recipe trained longer or shorter than the loop)
* ``caption_dropout_0``: no caption dropout (the recipe drops 10 %: text CFG's unconditioned branch)
* ``reference_dropout_0``: no reference dropout (the recipe drops 10 %: image CFG's e_00 branch)
* ``rank_8``: LoRA rank 8 instead of 32; ``rank_64``, ``rank_128``: more (128 = the toy's width: full rank)
* ``no_curation``: the dataset stage with ``dataset.include_rejected = true``, i.e. training on the
  inconsistent grids' pairs too (what curation removes)
* ``no_jitter``: the teacher draws every panel's object exactly at its context's place (``teacher.toy_jitter
  = 0``; the loop's 0.03 moves each by up to 4 px at 128 px), i.e. what an inexact copy costs
* ``logit_std_1.6``: a wider timestep density (logit-normal(1.5, 1.6): more of the low noise levels, where
  the last details are drawn); ``logit_mean_2``: the other way, logit-normal(2, 1)
* ``ema_0.99``, ``ema_0.995``: an EMA of the trainable weights (``training.ema_decay``), which validation, best.safetensors
  and the adapter then hold (the recipe ships the live weights)
* ``cosine``: the learning rate decays to 0 along a cosine over the run (the recipe keeps it constant)

-> DIR/ablations.md: CP/PF of each, next to the loop's own trained row (s_i = s_t = 1).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from . import toy_loop as loop

ABLATIONS: dict[str, list[str]] = {
    "recipe": [],  # no change: the recipe again, e.g. at other --steps
    "caption_dropout_0": ["training.caption_dropout=0.0"],
    "reference_dropout_0": ["training.reference_dropout=0.0"],
    "rank_8": ["network.rank=8", "network.alpha=8.0"],
    "rank_64": ["network.rank=64", "network.alpha=64.0"],
    "rank_128": ["network.rank=128", "network.alpha=128.0"],
    "no_curation": [],  # its own dataset: see uncurated_dataset
    "no_jitter": [],  # its own dataset: see unjittered_dataset
    "logit_std_1.6": ["training.logit_std=1.6"],
    "logit_mean_2": ["training.logit_mean=2.0"],
    "ema_0.99": ["training.ema_decay=0.99"],
    "ema_0.995": ["training.ema_decay=0.995"],
    "cosine": ["optimizer.scheduler=cosine"],
}


def _derived_dataset(out: Path, env: dict[str, str], name: str, linked: tuple[str, ...], command: str,
                     sets: list[str]) -> Path:  # fmt: skip
    """The dataset of workdir ``datagen_<name>``: the loop's ``linked`` stages (symlinks, not copies), then
    ``python -m datagen <command>`` with ``sets`` over the loop's datagen config (once; a rerun reuses it)."""
    src, dest = out / "datagen", out / f"datagen_{name}"
    dest.mkdir(exist_ok=True)
    for part in linked:
        if not (dest / part).exists():
            os.symlink(src / part, dest / part, target_is_directory=True)
    if not (dest / "dataset" / "index.parquet").is_file():
        cmd = [sys.executable, "-m", "datagen", command, "--config", str(out / "datagen.toml"), "--workdir", str(dest),
               *[x for kv in sets for x in ("--set", kv)], "--no-progress"]  # fmt: skip
        loop.run_stage(cmd, out / "logs" / f"datagen_{name}.log", env)
    return dest / "dataset"


def uncurated_dataset(out: Path, env: dict[str, str]) -> Path:
    """The loop's datagen workdir with every verdict's pair in the dataset (rejects included), in its own
    workdir (the stages before ``dataset`` linked, not copied)."""
    stages = ("captions", "prompts", "teacher", "panels", "curate")
    return _derived_dataset(out, env, "no_curation", stages, "dataset", ["dataset.include_rejected=true"])


def unjittered_dataset(out: Path, env: dict[str, str], judge_url: str) -> Path:
    """The loop's captions and prompts drawn again by the toy teacher with ``teacher.toy_jitter = 0`` (every
    panel's object exactly where its context puts it) and taken through panels, curation and dataset."""
    sets = ["teacher.toy_jitter=0.0", f"vlm.base_url={judge_url}"]
    return _derived_dataset(out, env, "no_jitter", ("captions", "prompts"), "run", sets)


def run_ablation(out: Path, name: str, judge_url: str, env: dict[str, str], steps: int | None = None) -> Path:
    """One ablation's training run and its eval; returns the eval's scores table."""
    sets = list(ABLATIONS[name])
    if name == "no_curation":
        sets.append(f"dataset.paths=['{uncurated_dataset(out, env)}']")
    if name == "no_jitter":
        sets.append(f"dataset.paths=['{unjittered_dataset(out, env, judge_url)}']")
    run = f"ablation_{name}"
    validation = [*loop.validation_sets(out, loop.bench_subjects(out), "grid", judge_url), *sets]
    adapters = loop.train(out, steps, validation, {**env, "OPENAI_API_KEY": env[loop.KEY_ENV]}, run)
    best = out / run / "best.safetensors"
    return loop.evaluate(out, f"eval_{run}", ["--adapter", f"{name}={best if best.is_file() else adapters[-1]}"], judge_url, env)


def summarise(out: Path, tables: dict[str, Path]) -> str:
    """CP/PF of each ablation and CP's difference to the recipe, paired by subject (95% bootstrap intervals:
    the loop's benchmark is small (36 subjects x 1 prompt), so only differences whose interval excludes 0 count)."""
    import pandas as pd

    from dsd.eval.stats import mean_interval, paired_difference

    recipe = pd.read_parquet(out / "eval" / "report" / "scores.parquet")
    recipe = recipe[recipe.system == "trained"]
    rows = [("recipe (the loop's trained row)", recipe)]
    rows += [(name, (f := pd.read_parquet(path))[f.system == name]) for name, path in tables.items()]
    lines = ["| ablation | CP [95%] | CP - recipe [95%] | PF | images |", "|---|---|---|---|---|"]
    for label, g in rows:
        cp, lo, hi, _ = mean_interval(g.cp.to_numpy()[:, None], g.subject.to_numpy())
        d, dlo, dhi = paired_difference(g.cp.to_numpy()[:, None], g.subject.to_numpy(), recipe.cp.to_numpy()[:, None],
                                        recipe.subject.to_numpy())  # fmt: skip
        diff = "-" if g is recipe else f"{d[0]:+.3f} [{dlo[0]:+.3f}, {dhi[0]:+.3f}]"
        lines.append(f"| {label} | {cp[0]:.3f} [{lo[0]:.3f}, {hi[0]:.3f}] | {diff} | {g.pf.mean():.3f} | {len(g)} |")
    text = "\n".join(lines) + "\n"
    (out / "ablations.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args, out = loop.finished_loop_args(argv, "python -m benchmarks.toy_ablations", __doc__, list(ABLATIONS), "ablations")
    env, tables, t0 = loop.loop_env(), {}, time.perf_counter()
    with loop.judge_server(env) as judge_url:
        for name in args.only or list(ABLATIONS):
            tables[name] = run_ablation(out, name, judge_url, env, args.steps)
    print(summarise(out, tables) + f"\nablations: {time.perf_counter() - t0:.0f} s")  # noqa: T201 - the benchmark's report
    return 0


if __name__ == "__main__":
    sys.exit(main())
