"""Issue 20's diagnosis: why pairs with the toy's sides do not teach the copy that whole views teach.

    python -m benchmarks.toy_sides_diagnosis --loop DIR [--only NAME ...] [--steps N]

``DIR`` is a finished ``python -m benchmarks.toy_loop`` folder: its base (pretrained on whole views only)
and its dataset. The diagnosis draws the same identities' 2x2 grids again with sides (``teacher.toy_views =
"sides"``: half the panels whole, the rest one side), cuts and curates them into pairs (``DIR/sides``), and
trains k = 1 from the loop's base with the loop's recipe on one dataset per variant, each validated by the
toy judge on the loop's held-out identities with *whole* references (the loop's own validation):

* ``sides``: every curated pair of the sides grids (references and targets of any view)
* ``whole_targets``: its pairs whose target is whole (references of any view)
* ``whole_pairs``: its pairs whose reference and target are both whole
* ``loop_subset``: as many of the loop's own (whole-view) pairs as ``whole_pairs`` has, drawn at random
* ``covered``: its pairs whose reference shows all that the target shows (a whole reference, or the same
  side): no pair asks for what its reference does not show

-> DIR/sides_diagnosis.md: pairs, the best validation CP and the mean over the second half of training
(24 identities per validation: one point is noisy), for each and for the loop's own run.
A view is what the toy judge described at curation ("the plain side of ...").
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import toy_loop as loop

VARIANTS = ("sides", "whole_targets", "whole_pairs", "loop_subset", "covered")


def _view(description: str) -> str:
    """"plain" or "patterned" for the toy judge's "the plain side of ...", else "whole"."""
    return description.split()[1] if description.startswith("the ") else "whole"


def _whole(description: str) -> bool:
    return _view(description) == "whole"


def _covered(v: dict) -> bool:
    return _whole(v["description_a"]) or _view(v["description_a"]) == _view(v["description_b"])


def filtered_dataset(out: Path, src: Path, name: str, keep: Callable[[dict], bool], env: dict[str, str]) -> Path:
    """A datagen workdir ``out / f"datagen_{name}"`` whose dataset holds ``src``'s accepted pairs that ``keep``
    (the stages before curation linked; the verdicts copied with the others turned into rejects)."""
    dest = out / f"datagen_{name}"
    (dest / "curate").mkdir(parents=True, exist_ok=True)
    for part in ("captions", "prompts", "teacher", "panels"):
        if not (dest / part).exists():
            os.symlink(src / part, dest / part, target_is_directory=True)
    if not (dest / "dataset" / "index.parquet").is_file():
        rows = []
        for v in _verdicts(src):
            if v.get("accepted") and not keep(v):
                v = {**v, "accepted": False, "reason": f"left out by the sides diagnosis ({name})"}
            rows.append(json.dumps(v) + "\n")
        (dest / "curate" / "verdicts.jsonl").write_text("".join(rows))
        cmd = [sys.executable, "-m", "datagen", "dataset", "--config", str(src.parent / "datagen.toml"), "--workdir",
               str(dest), "--no-progress"]  # fmt: skip
        loop.run_stage(cmd, out / "logs" / f"datagen_{name}.log", env)
    return dest / "dataset"


def sides_datagen(out: Path, judge_url: str, env: dict[str, str]) -> Path:
    """The loop's identities drawn again on 2x2 grids with sides, cut and curated into pairs (``out / "sides"``)."""
    sides = out / "sides"
    sides.mkdir(exist_ok=True)
    identities = len((out / "captions.txt").read_text().splitlines())
    cfg = loop.write_datagen_config(sides, identities, judge_url, "grid", views="sides", layouts=("2x2",), max_references=1)
    loop.run_datagen(sides, cfg, env)
    return sides / "datagen"


def datasets(out: Path, sides: Path, env: dict[str, str]) -> dict[str, Path]:
    whole_pairs = filtered_dataset(out, sides, "whole_pairs", lambda v: _whole(v["description_a"]) and _whole(v["description_b"]), env)
    n = len(_index(whole_pairs))
    accepted = [v["id"] for v in _verdicts(out / "datagen") if v.get("accepted")]
    subset = set(random.Random(0).sample(accepted, min(n, len(accepted))))
    return {"sides": sides / "dataset",
            "whole_targets": filtered_dataset(out, sides, "whole_targets", lambda v: _whole(v["description_b"]), env),
            "whole_pairs": whole_pairs,
            "loop_subset": filtered_dataset(out, out / "datagen", "loop_subset", lambda v: v["id"] in subset, env),
            "covered": filtered_dataset(out, sides, "covered", _covered, env)}  # fmt: skip


def _verdicts(workdir: Path) -> list[dict]:
    from dsd.manifest import read_records

    return list(read_records(workdir / "curate" / "verdicts.jsonl"))


def _index(dataset: Path):
    import pandas as pd

    return pd.read_parquet(dataset / "index.parquet")


def best_validation(run_dir: Path) -> tuple[int, float]:
    """(step, CP) of a training run's best validation (``best.json``)."""
    best = json.loads((run_dir / "best.json").read_text())
    return int(best["step"]), float(best["value"])


def summarise(out: Path, paths: dict[str, Path], names: list[str]) -> str:
    lines = ["| training data (k = 1, the loop's base and recipe) | pairs | best validation CP (step) | mean CP, second half "
             "| CP at each validation |", "|---|---|---|---|---|"]  # fmt: skip
    runs = [("the loop's own run (whole views)", out / "datagen" / "dataset", out / "train")]
    runs += [(name, paths[name], out / f"diagnosis_{name}") for name in names]
    for label, dataset, run in runs:
        step, cp = best_validation(run)
        curve = [c for _, c, _ in loop.validation_curve(out, run.name)]
        late = sum(curve[len(curve) // 2 :]) / max(len(curve) - len(curve) // 2, 1)  # steadier than one best point
        lines.append(f"| {label} | {len(_index(dataset))} | {cp:.3f} ({step}) | {late:.3f} | {', '.join(f'{c:.2f}' for c in curve)} |")
    text = "\n".join(lines) + "\n"
    (out / "sides_diagnosis.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args, out = loop.finished_loop_args(argv, "python -m benchmarks.toy_sides_diagnosis", __doc__, list(VARIANTS), "variants")
    env, t0, names = {**loop.loop_env(), "OMP_NUM_THREADS": "1"}, time.perf_counter(), list(args.only or VARIANTS)
    with loop.judge_server(env) as judge_url:
        paths = datasets(out, sides_datagen(out, judge_url, env), env)
        heldout = loop.bench_subjects(out)

        def train(name: str) -> list[Path]:
            sets = [*loop.validation_sets(out, heldout, "grid", judge_url), f"dataset.paths=['{paths[name]}']"]
            return loop.train(out, args.steps, sets, {**env, "OPENAI_API_KEY": env[loop.KEY_ENV]}, f"diagnosis_{name}")

        with ThreadPoolExecutor(2) as pool:  # two runs at a time, one thread each (env)
            list(pool.map(train, names))
    print(summarise(out, paths, names) + f"\ndiagnosis: {time.perf_counter() - t0:.0f} s")  # noqa: T201 - the benchmark's report
    return 0


if __name__ == "__main__":
    sys.exit(main())
