"""Issue 19: does the pipeline learn? The whole DSD loop on the toy domain, through the shipped CLIs.

    python -m benchmarks.toy_loop --out DIR [--identities 150] [--heldout 12] [--steps N]

1. the learnable toy FLUX (tests/support/toy_model.py) -> DIR/flux (its VAE's reconstruction PSNR is reported)
2. ``python -m datagen run``: captions (toy identities of the training split) -> prompts (template mode) ->
   teacher (backend "toy") -> panels -> curate (the toy judge over the OpenAI protocol) -> dataset
3. ``python -m training cache`` + ``train`` with training/configs/toy_cpu.toml; every checkpoint exported
4. a held-out benchmark (identities never in training) in the eval's own layout, and the teacher's own
   panels for it (the oracle)
5. ``python -m dsd eval`` with the toy judge: oracle, trained (s_i = s_t = 1; and true CFG), the trained LoRA
   with a zero embedder (text only), the untrained plain base, and every checkpoint (learning curve)
-> DIR/summary.md (table), DIR/learning_curve.png, the eval reports under DIR/eval*/report/.

Every stage is the shipped CLI and resumes; the toy parts are the teacher backend, the judge and the model
sizes. The judge runs in its own process (tests/support/toy_judge.py) for the whole loop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "training" / "configs" / "toy_cpu.toml"
KEY_ENV = "DSD_TOY_JUDGE_KEY"
EVAL_SAMPLING = ["--steps", "16", "--width", "256", "--height", "128", "--seeds", "0", "--no-progress"]


def _run(cmd: list[str], log: Path, env: dict[str, str]) -> None:
    """One shipped CLI, its output kept in ``log``; a failure stops the loop with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"{' '.join(cmd[:4])} failed (exit {proc.returncode}); {log}:\n{tail}")


def _identities(heldout: bool):
    from datagen.teacher import toy_domain as dom

    split = "heldout" if heldout else "train"
    return [i for i in dom.all_identities() if dom.identity_split(i) == split]


def write_datagen_config(out: Path, n_identities: int, judge_url: str) -> Path:
    ids = _identities(heldout=False)
    random.Random(0).shuffle(ids)
    (out / "captions.txt").write_text("".join(f"{i.text}\n" for i in ids[:n_identities]))
    cfg = f"""
[captions]
sources = ["captions.txt"]
[prompts]
mode = "template"
layouts = ["2x2"]
seed = 0
[teacher]
backend = "toy"
width = 288
height = 288
seeds_per_prompt = 1
[panels]
max_pairs_per_grid = 12
min_panel_size = 64
no_edge = "even"
[curate]
min_confidence = 0.7
image_format = "png"
[dataset]
shard_size = 256
[vlm]
kind = "openai"
model = "toy-judge"
base_url = "{judge_url}"
api_key_env = "{KEY_ENV}"
"""
    path = out / "datagen.toml"
    path.write_text(cfg)
    return path


def write_benchmark(out: Path, n_subjects: int, prompts_per_subject: int = 3) -> tuple[Path, Path]:
    """Held-out identities in the eval's ``dsd`` layout, and the teacher's own panels for them (the oracle)."""
    from datagen.teacher import toy_domain as dom
    from tests.support.toy_judge import caption_for
    from tests.support.toy_vision import reading_of

    bench, oracle = out / "bench", out / "oracle"
    rng = random.Random(1)
    ids = _identities(heldout=True)
    rng.shuffle(ids)
    contexts = dom.all_contexts()
    records = []
    for identity in ids[:n_subjects]:
        ref_ctx, *asked = rng.sample(contexts, 1 + prompts_per_subject)
        (bench / "subjects" / identity.key).mkdir(parents=True, exist_ok=True)
        dom.draw_panel(identity, ref_ctx).save(bench / "subjects" / identity.key / "ref.png")
        (oracle / identity.key).mkdir(parents=True, exist_ok=True)
        for k, ctx in enumerate(asked):
            text = caption_for(reading_of(identity, ctx))
            records.append({"prompt": text, "subject": identity.key, "id": f"p{k:02d}"})
            dom.draw_panel(identity, ctx).save(oracle / identity.key / f"p{k:02d}.png")
    (bench / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return bench, oracle


def zero_embedder_copy(adapter: Path, dest: Path) -> Path:
    """The trained LoRA with the condition embedder zeroed: the same model given no reference (text only)."""
    from dsd.weights.adapter import DSDAdapter, load_adapter, save_adapter

    ad = load_adapter(adapter)
    zero = {k: v.clone().zero_() for k, v in ad.c_embedder.items()}
    meta = {k: v for k, v in ad.metadata.items() if k.startswith("dsd_train")}
    return save_adapter(DSDAdapter(zero, ad.lora), dest, extra_metadata=meta)


def train(out: Path, steps: int | None, env: dict[str, str]) -> list[Path]:
    """``training cache`` + ``train`` on the curated dataset; every checkpoint exported as ``step_<N>.safetensors``."""
    sets = [f"model.flux={out / 'flux'}", f"dataset.paths=['{out / 'datagen' / 'dataset'}']",
            f"dataset.cache_dir={out / 'train_cache'}", f"saving.output_dir={out / 'train'}"]  # fmt: skip
    if steps:
        sets += [f"training.steps={steps}", f"saving.save_every={max(steps // 4, 1)}"]
    flags = ["--config", str(CONFIG), *[x for s in sets for x in ("--set", s)], "--no-progress"]
    log = out / "logs" / "training.log"
    _run([sys.executable, "-m", "training", "cache", *flags], log, env)
    _run([sys.executable, "-m", "training", "train", *flags], log, env)
    adapters = []
    for ckpt in sorted((out / "train" / "checkpoints").glob("step-*")):
        dest = out / "adapters" / f"step_{int(ckpt.name.split('-')[1]):06d}.safetensors"
        if not dest.is_file():
            _run([sys.executable, "-m", "training", "export", *flags, "--checkpoint", str(ckpt), "--out", str(dest)], log, env)
        adapters.append(dest)
    return adapters


def evaluate(out: Path, name: str, systems: list[str], judge_url: str, env: dict[str, str], extra: list[str] = ()) -> Path:
    """``dsd eval`` on the held-out benchmark with the toy judge; returns its scores table."""
    cmd = [sys.executable, "-m", "dsd", "eval", "--bench", str(out / "bench"), "--out", str(out / name),
           "--flux", str(out / "flux"), *systems, *EVAL_SAMPLING, *extra, "--judge", "openai", "--judge-model", "toy-judge",
           "--judge-base-url", judge_url, "--title", f"toy loop: {name}"]  # fmt: skip
    _run(cmd, out / "logs" / f"{name}.log", {**env, "OPENAI_API_KEY": env[KEY_ENV]})
    return out / name / "report" / "scores.parquet"


def summarise(out: Path, tables: dict[str, Path], timings: dict[str, float], psnr: float) -> str:
    import pandas as pd

    from tests.support.toy_judge import curation_scores

    rows = []
    for run, path in tables.items():
        frame = pd.read_parquet(path)
        for system, g in frame.groupby("system"):
            rows.append({"run": run, "system": system, "step": g.step.iloc[0], "CP": g.cp.mean(), "PF": g.pf.mean(),
                         "images": len(g)})  # fmt: skip
    table = pd.DataFrame(rows)
    lines = ["| run | system | CP | PF | images |", "|---|---|---|---|---|"]
    lines += [f"| {r.run} | {r.system} | {r.CP:.3f} | {r.PF:.3f} | {r.images} |" for r in table.itertuples()]
    cur = curation_scores(out / "datagen")
    lines += ["", f"toy VAE reconstruction PSNR: {psnr:.2f} dB", "",
              f"curation (toy judge) against the teacher's plan: {cur['grids']} grids cut, {cur['inconsistent_grids']} of "
              f"them inconsistent; {cur['rejected_inconsistent']} of {cur['inconsistent_pairs']} inconsistent pairs "
              f"rejected; precision {cur['precision']:.3f}, recall {cur['recall']:.3f} over {cur['pairs']} pairs", "",
              "| stage | seconds |", "|---|---|", *[f"| {k} | {v:.0f} |" for k, v in timings.items()]]  # fmt: skip
    _plot_curve(table, out / "learning_curve.png")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def _plot_curve(table, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = table[(table.run == "eval") & table.system.str.startswith("step_")].sort_values("step")
    if curve.empty:
        return
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(curve.step.astype(int), curve.CP, "o-", label="CP (trained)")
    ax.plot(curve.step.astype(int), curve.PF, "s-", label="PF (trained)")
    for system, style in (("oracle", ":"), ("zero_embedder", "--")):
        hit = table[(table.run == "eval") & (table.system == system)]
        if not hit.empty:
            ax.axhline(float(hit.CP.iloc[0]), linestyle=style, color="grey", label=f"CP {system}")
    ax.set_xlabel("training step")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dest, dpi=120)
    plt.close(fig)


@contextlib.contextmanager
def judge_server(env: dict[str, str]) -> Iterator[str]:
    """The toy judge in its own process (``python -m tests.support.toy_judge``); yields its OpenAI base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.toy_judge"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        url = proc.stdout.readline().strip() if proc.stdout else ""
        if not url.startswith("http"):
            raise SystemExit(f"the toy judge did not start (exit {proc.poll()})")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def run_loop(out: Path, identities: int, heldout: int, steps: int | None) -> str:
    from tests.support.toy_model import make_toy_pipeline

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # One thread: on a shared 2-core machine two threads per process run ~3x slower than one (spinning).
    env = {**os.environ, "PYTHONPATH": str(REPO), KEY_ENV: "toy", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    timings: dict[str, float] = {}
    t = time.perf_counter()
    info_path = out / "flux" / "dsd_toy.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else make_toy_pipeline(out / "flux")
    timings["toy model"] = time.perf_counter() - t
    with judge_server(env) as judge_url:
        t = time.perf_counter()
        cfg = write_datagen_config(out, identities, judge_url)
        _run([sys.executable, "-m", "datagen", "run", "--config", str(cfg), "--workdir", str(out / "datagen"), "--no-progress"],
             out / "logs" / "datagen.log", env)  # fmt: skip
        timings["datagen"] = time.perf_counter() - t
        t = time.perf_counter()
        adapters = train(out, steps, env)
        timings["training (cache, train, export)"] = time.perf_counter() - t
        t = time.perf_counter()
        write_benchmark(out, heldout)
        final = adapters[-1]
        zero = zero_embedder_copy(final, out / "adapters" / "zero_embedder.safetensors")
        systems = ["--images", f"oracle={out / 'oracle'}", "--adapter", f"zero_embedder={zero}", "--base", "untrained_base",
                   *[x for a in adapters for x in ("--adapter", str(a))]]  # fmt: skip
        tables = {"eval": evaluate(out, "eval", systems, judge_url, env),
                  "eval_true_cfg": evaluate(out, "eval_true_cfg", ["--adapter", f"trained_cfg={final}"], judge_url,
                                            env, ["--image-guidance", "2.0", "--text-guidance", "1.5"])}  # fmt: skip
        timings["eval"] = time.perf_counter() - t
    return summarise(out, tables, timings, float(info["vae_psnr_db"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.toy_loop", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="work folder (rerun the same command to resume)")
    p.add_argument("--identities", type=int, default=150, help="training identities (one caption and grid each)")
    p.add_argument("--heldout", type=int, default=12, help="held-out identities in the benchmark")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: toy_cpu.toml's)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    text = run_loop(args.out, args.identities, args.heldout, args.steps)
    print(text + f"\nwhole loop: {time.perf_counter() - t0:.0f} s")  # noqa: T201 - the benchmark's report
    return 0


if __name__ == "__main__":
    sys.exit(main())
