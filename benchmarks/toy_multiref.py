"""Issue 20's proof: do several references carry more of an identity than one? On the toy domain's sides.

    python -m benchmarks.toy_multiref --out DIR [--identities 200] [--subjects 24] [--steps N] [--whole-targets] [--jitter J]
        [--whole-share S] [--no-k1-only] [--base-frames 2,2,3,4]
    python -m benchmarks.toy_multiref --out DIR --rescore 96    # a finished run's checkpoints on 96 new subjects

The toy loop (benchmarks/toy_loop.py) with ``views = "sides"``: a panel shows the whole object or one of its
two sides (the plain side: shape and body colour; the patterned side: pattern and accent colour on ivory),
so one side carries half the identity and several sides more of it.

1. the toy base, pretrained on whole panels and sides in rows of 2 to 4 panels (FLUX's part: it has seen
   wide canvases), half the rows two panels (``--base-frames``: the panel counts its rows draw from, evenly)
2. ``python -m datagen run``: 3x3 grids of random views -> panels -> pairs and tuples of k = 2, 3 references
   curated by the toy judge (all attributes the views show agree) -> a dataset with tuples
3. two trainings from the same dataset and base, each its own ``python -m training`` run: ``train_multi``
   with ``training.references = {1 = 0.2, 2 = 0.3, 3 = 0.5}`` and ``train_k1`` with pairs only (today's DSD;
   ``--no-k1-only``: the multi run alone)
4. a held-out benchmark: per subject three references, each a random side in its own context, and the
   whole object (``judge_reference``, never given) that CP is measured against; the prompts ask for the
   whole object in other contexts
5. ``python -m dsd eval --references 1,2,3``: both models (and the multi model with a zero embedder) at
   k = 1, 2, 3; the oracle is the teacher's whole panels
-> DIR/summary_multiref.md (CP/PF per system and k), DIR/cp_per_k.png.

``--whole-targets`` starts the toy judge with that flag: curation then keeps only pairs and tuples whose target
(the last picture) shows the whole object, as the eval's prompts ask; the references stay any view.

What an ideal model can reach: with k random sides the chance that both sides were shown is 1 - 2^(1 - k),
so CP is at most 0.625 / 0.81 / 0.91 for k = 1 / 2 / 3 (a plain side leaves accent and pattern unknown,
a patterned side the body colour).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from datagen.teacher.config import TOY_WHOLE_SHARE

from . import toy_loop as loop

MIX = "training.references={1 = 0.2, 2 = 0.3, 3 = 0.5}"
SIDES = ("plain", "patterned")
KS = "1,2,3"
# The README's fourth run ("Multi-reference proof"): a base of 3,000 steps, half of them on two-panel rows, the rest
# on 3 and 4 (1,200 drew the canvases badly: PF 0.32 on its own grids); 3,200 training steps per run (validation
# was still rising at 1,600 and at 3,200).
PRETRAIN_STEPS, STEPS = 3000, 3200


def write_sides_benchmark(out: Path, n_subjects: int, placement: str, prompts_per_subject: int = 2,
                          k: int = 3, first: int = 0, name: str = "bench_sides") -> tuple[Path, Path]:  # fmt: skip
    """Held-out subjects (``first`` on in the held-out order) with ``k`` references of random sides (``ref_<i>.png``,
    in name order) and the whole object (``whole.png``, the judge's reference) in ``out / name``; the oracle
    (``oracle_sides`` beside it) draws the whole object as each prompt asks."""
    from datagen.teacher import toy_domain as dom
    from tests.support.toy_judge import caption_for
    from tests.support.toy_vision import reading_of

    bench, oracle = out / name, out / name.replace("bench", "oracle", 1)
    rng, records = random.Random(3), []
    for identity in loop.heldout_identities()[first : first + n_subjects]:
        head, others = dom.draw_contexts(rng, k + prompts_per_subject, placement)
        contexts = [head, *others]  # k references, the judge's whole view, then the asked contexts
        folder = bench / "subjects" / identity.key
        folder.mkdir(parents=True, exist_ok=True)
        for i, ctx in enumerate(contexts[:k], 1):
            dom.draw_panel(identity, ctx, view=rng.choice(SIDES)).save(folder / f"ref_{i}.png")
        dom.draw_panel(identity, contexts[k]).save(folder / "whole.png")
        (folder / "subject.json").write_text(json.dumps({"judge_reference": "whole.png"}))
        (oracle / identity.key).mkdir(parents=True, exist_ok=True)
        for j, ctx in enumerate(contexts[k + 1 :]):
            records.append({"prompt": caption_for(reading_of(identity, ctx)), "subject": identity.key, "id": f"p{j:02d}"})
            dom.draw_panel(identity, ctx).save(oracle / identity.key / f"p{j:02d}.png")
    (bench / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return bench, oracle


def train_runs(out: Path, steps: int | None, validation: list[str], env: dict[str, str], with_k1: bool = True) -> dict[str, Path]:
    """The multi-reference run and (``with_k1``) the pairs-only run side by side, each with its share of the stage's
    threads (two runs with every thread each would spin against each other; see
    :func:`benchmarks.toy_loop.stage_threads`)."""
    runs = {"train_multi": [*validation, MIX], **({"train_k1": validation} if with_k1 else {})}
    env = {**env, "OMP_NUM_THREADS": str(max(loop.stage_threads() // len(runs), 1))}
    with ThreadPoolExecutor(len(runs)) as pool:
        jobs = {run: pool.submit(loop.train, out, steps, sets, env, run) for run, sets in runs.items()}
        adapters = {run: job.result() for run, job in jobs.items()}
    return {run: (out / run / "best.safetensors") if (out / run / "best.safetensors").is_file() else ads[-1]
            for run, ads in adapters.items()}  # fmt: skip


def evaluate(out: Path, adapters: dict[str, Path], judge_url: str, env: dict[str, str]) -> Path:
    zero = loop.zero_embedder_copy(adapters["train_multi"], out / "adapters" / "multi_zero_embedder.safetensors")
    images = [x for k in (1, 2, 3) for x in ("--images", f"oracle@k{k}={out / 'oracle_sides'}")]
    systems = [*images, "--adapter", f"multi={adapters['train_multi']}", "--adapter", f"multi_zero_embedder={zero}"]
    if "train_k1" in adapters:
        systems += ["--adapter", f"k1_only={adapters['train_k1']}"]
    return loop.evaluate(out, "eval_multiref", systems, judge_url, env, ["--references", KS], bench="bench_sides")


def summarise(out: Path, table: Path, timings: dict[str, float], jitter: float, whole_share: float | None = None) -> str:
    """CP/PF per system and k (95% bootstrap intervals over subjects) and the differences the proof asks
    about, paired by subject: k = 3 and k = 2 against k = 1, and k = 1 against the pairs-only model."""
    import pandas as pd

    from dsd.eval.stats import mean_interval

    frame = pd.read_parquet(table)
    frame["name"] = frame.system.str.replace(r"@k\d+$", "", regex=True)
    lines, rows = ["| system | k | CP [95%] | PF | images |", "|---|---|---|---|---|"], []
    for (name, k), g in frame.groupby(["name", "references"]):
        cp, lo, hi, _ = mean_interval(g.cp.to_numpy()[:, None], g.subject.to_numpy())
        rows.append({"name": name, "references": k, "CP": cp[0], "PF": g.pf.mean()})
        lines.append(f"| {name} | {k} | {cp[0]:.3f} [{lo[0]:.3f}, {hi[0]:.3f}] | {g.pf.mean():.3f} | {len(g)} |")
    lines += ["", "| difference in CP (paired by subject) | mean [95%] |", "|---|---|"]
    for a, b in (("multi@k3", "multi@k1"), ("multi@k2", "multi@k1"), ("multi@k3", "multi@k2"), ("multi@k1", "k1_only@k1"),
                 ("k1_only@k3", "k1_only@k1")):  # fmt: skip
        lines.append(f"| {a} - {b} | {loop.cp_difference(frame, a, b)} |")
    share = TOY_WHOLE_SHARE if whole_share is None else whole_share
    base = json.loads((out / "flux" / "dsd_toy.json").read_text())
    frames = ",".join(str(f) for f in base.get("pretrain_frames", loop.SIDES_FRAMES))  # bases before the record: the default
    teacher = (f"teacher placement jitter (teacher.toy_jitter): {jitter} of the panel side; panels drawn whole "
               f"(teacher.toy_whole_share): {share}; the base's pretraining rows drew {frames} panels evenly")  # fmt: skip
    lines += ["", _data_line(out), teacher, "", "| stage | seconds |", "|---|---|", *[f"| {k} | {v:.0f} |" for k, v in timings.items()]]
    _plot(pd.DataFrame(rows), out / "cp_per_k.png")
    text = "\n".join(lines) + "\n"
    (out / "summary_multiref.md").write_text(text)
    return text


def _data_line(out: Path) -> str:
    """The dataset's samples per k and curation's pair precision/recall against the teacher's plan."""
    import pandas as pd

    from tests.support.toy_judge import curation_scores

    ks = pd.read_parquet(out / "datagen" / "dataset" / "index.parquet")["k"].fillna(1).astype(int).value_counts().sort_index()
    cur = curation_scores(out / "datagen")
    sides = f"; {cur['side_targets']} pairs rejected for a side as the target (--whole-targets)" if cur["side_targets"] else ""
    return (f"dataset: {', '.join(f'{n} samples with k = {k}' for k, n in ks.items())}; {cur['grids']} grids cut; pair "
            f"curation precision {cur['precision']:.3f}, recall {cur['recall']:.3f} over {cur['pairs']} pairs{sides}")  # fmt: skip


def _plot(rows, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for name, g in rows.groupby("name"):
        ax.plot(g.references, g.CP, "o-", label=str(name))
    ax.plot([1, 2, 3], [1 - 0.5 * 0.75, 1 - 0.25 * 0.75, 1 - 0.125 * 0.75], "k:", label="ideal (random sides)")
    ax.set_xlabel("references k")
    ax.set_ylabel("CP (toy judge, against the whole object)")
    ax.set_xticks([1, 2, 3])
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dest, dpi=120)
    plt.close(fig)


def run(out: Path, identities: int, subjects: int, steps: int | None, pretrain_steps: int, whole_targets: bool = False,
        jitter: float = loop.JITTER, whole_share: float | None = None, with_k1: bool = True,
        base_frames: tuple[int, ...] = loop.SIDES_FRAMES) -> str:  # fmt: skip
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env, timings, t = loop.loop_env(), {}, time.perf_counter()
    loop.toy_base(out / "flux", "grid", pretrain_steps, views="sides", frames=base_frames)
    timings["toy model (build + pretraining)"] = time.perf_counter() - t
    with loop.judge_server(env, ("--whole-targets",) if whole_targets else ()) as judge_url:
        t = time.perf_counter()
        loop.run_datagen(out, loop.write_datagen_config(out, identities, judge_url, "grid", views="sides", jitter=jitter,
                                                      whole_share=whole_share), env)  # fmt: skip
        timings["datagen"] = time.perf_counter() - t
        t = time.perf_counter()
        validation = loop.validation_sets(out, subjects, "grid", judge_url)
        adapters = train_runs(out, steps, validation, {**env, "OPENAI_API_KEY": env[loop.KEY_ENV]}, with_k1)
        timings["training (both runs side by side)" if with_k1 else "training (multi)"] = time.perf_counter() - t
        t = time.perf_counter()
        write_sides_benchmark(out, subjects, "grid")
        table = evaluate(out, adapters, judge_url, env)
        timings["eval"] = time.perf_counter() - t
    return summarise(out, table, timings, jitter, whole_share)


def rescore(out: Path, subjects: int) -> str:
    """A finished run's exported checkpoints (``adapters/train_multi_step_*``), its best step and that step's zero
    embedder, scored again at k = 1, 2, 3 on ``subjects`` *new* held-out subjects: after the run's benchmark and
    validation identities, so the benchmark that picked a checkpoint does not also grade it. -> summary_rescore.md"""
    import pandas as pd

    out = out.resolve()
    steps = sorted((out / "adapters").glob("train_multi_step_*.safetensors"))
    best = out / "train_multi" / "best.safetensors"
    if not steps or not best.is_file() or not (out / "bench_sides").is_dir():
        raise SystemExit(f"{out} is no finished toy_multiref run (no bench_sides, train_multi/best.safetensors or exports)")
    first = loop.first_unused(out, "bench_sides")
    write_sides_benchmark(out, subjects, "grid", first=first, name="bench_rescore")
    zero = loop.zero_embedder_copy(best, out / "adapters" / "multi_zero_embedder_rescore.safetensors")
    named = {f"step_{p.stem.rsplit('_', 1)[1].lstrip('0')}": p for p in steps} | {"best": best, "best_zero_embedder": zero}
    env = loop.loop_env()
    with loop.judge_server(env) as judge_url:
        systems = [x for n, p in named.items() for x in ("--adapter", f"{n}={p}")]
        table = loop.evaluate(out, "eval_rescore", systems, judge_url, env, ["--references", KS], bench="bench_rescore")
    frame = pd.read_parquet(table)
    lines = ["| system | CP at k = 1 / 2 / 3 | k3 - k1 [95%] | k2 - k1 [95%] | k3 - k2 [95%] |", "|---|---|---|---|---|"]
    for n in named:
        cps = " / ".join(f"{frame[frame.system == f'{n}@k{k}'].cp.mean():.3f}" for k in (1, 2, 3))
        diffs = [loop.cp_difference(frame, f"{n}@k{a}", f"{n}@k{b}") for a, b in ((3, 1), (2, 1), (3, 2))]
        lines.append(f"| {n} | {cps} | {' | '.join(diffs)} |")
    lines += ["", f"{subjects} held-out subjects from #{first} on, {len(frame) // len(named) // 3} images per cell", "",
              *_copy_when_shown(frame, out / "bench_rescore" / "subjects")]  # fmt: skip
    text = "\n".join(lines) + "\n"
    (out / "summary_rescore.md").write_text(text)
    return text


def _copy_when_shown(frame, subjects: Path) -> list[str]:
    """Per system@k and attribute: how often the target shows the whole object's attribute when some reference
    showed it, and when none did (a side shows half the identity), read by the toy judge's vision."""
    from PIL import Image

    from tests.support.toy_vision import read_picture

    attrs = ("shape", "body", "accent", "pattern")
    lines = [f"| system@k | {' | '.join(f'{a}: copied when shown / when not' for a in attrs)} |", "|---" * 5 + "|"]
    def read(path: Path, target: bool = False):
        with Image.open(path) as im:  # a sample's target is its last (square) frame
            return read_picture(im.crop((im.width - im.height, 0, im.width, im.height)) if target else im)

    for system, g in frame.groupby("system", sort=True):
        k, counts = int(g.references.iloc[0]), {(a, s): [0, 0] for a in attrs for s in (True, False)}
        for row in g.itertuples():
            whole = read(subjects / row.subject / "whole.png")
            refs = [read(subjects / row.subject / f"ref_{i}.png") for i in range(1, k + 1)]
            seen = read(row.path, target=True)
            for a in attrs:
                cell = counts[(a, any(getattr(r, a) == getattr(whole, a) for r in refs))]
                cell[0] += bool(seen.found and getattr(seen, a) == getattr(whole, a))
                cell[1] += 1
        lines.append(f"| {system} | " + " | ".join(f"{counts[(a, True)][0]}/{counts[(a, True)][1]}, "
                                                   f"{counts[(a, False)][0]}/{counts[(a, False)][1]}" for a in attrs) + " |")  # fmt: skip
    return lines


def _frames(text: str) -> tuple[int, ...]:
    try:
        frames = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give panel counts separated by commas, e.g. 2,3,4") from None
    if not frames or any(f not in (2, 3, 4) for f in frames):
        raise argparse.ArgumentTypeError(f"{text!r}: each panel count must be 2, 3 or 4 (k = 1 to 3 references)")
    return frames


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.toy_multiref", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="work folder (rerun the same command to resume)")
    p.add_argument("--identities", type=int, default=200, help="training identities (one caption and grid each)")
    p.add_argument("--subjects", type=int, default=24, help="held-out subjects in the benchmark")
    p.add_argument("--steps", type=int, default=STEPS, help="training steps of each run")
    p.add_argument("--pretrain-steps", type=int, default=PRETRAIN_STEPS, help="the toy base's pretraining steps")
    p.add_argument("--whole-targets", action="store_true",
                   help="curation keeps only pairs and tuples whose target shows the whole object (as the eval asks)")
    p.add_argument("--jitter", type=float, default=loop.JITTER,
                   help="teacher.toy_jitter: each panel's object moves by up to this share of the panel side (0: every "
                        "object exactly at its context's place, as the toy loop; the README's first three runs used 0.03)")
    p.add_argument("--whole-share", type=float, default=None,
                   help="teacher.toy_whole_share: the share of panels drawn whole (default 0.5); fewer give more tuples "
                        "whose references are all sides, as the eval's")
    p.add_argument("--base-frames", type=_frames, default=loop.SIDES_FRAMES,
                   help="panel counts the base's pretraining rows draw from, evenly, e.g. 2,3,4 (default 2,2,3,4: half "
                        "the rows two panels)")
    p.add_argument("--no-k1-only", dest="with_k1", action="store_false",
                   help="train the multi-reference model alone (with every thread), without the pairs-only control")
    p.add_argument("--rescore", type=int, metavar="SUBJECTS",
                   help="on a finished run: score its checkpoints again on this many new held-out subjects (neither "
                        "its benchmark's nor its validation's) -> summary_rescore.md; trains nothing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    if args.rescore:
        print(rescore(args.out, args.rescore) + f"\nrescore: {time.perf_counter() - t0:.0f} s")  # noqa: T201 - the report
        return 0
    text = run(args.out, args.identities, args.subjects, args.steps, args.pretrain_steps, args.whole_targets, args.jitter,
               args.whole_share, args.with_k1, args.base_frames)  # fmt: skip
    print(text + f"\nwhole run: {time.perf_counter() - t0:.0f} s")  # noqa: T201 - the benchmark's report
    return 0


if __name__ == "__main__":
    sys.exit(main())
