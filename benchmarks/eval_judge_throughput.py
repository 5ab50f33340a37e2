"""VLM judge throughput vs concurrency against FakeLLMServer with a fixed 200 ms latency.

Goal: >= 80 % of the ideal concurrency / latency requests per second, up to 32 in flight (as curation).

Method (as benchmarks/datagen_curation_throughput.py): the fake server runs in its own process (it
stands in for a remote API). Every level runs ``--reps`` times on a fresh judge log and a fresh answer
cache (no cache hits), ``--rounds`` requests per worker; each image costs two requests (CP with the
reference and the output, PF with the output), one repeat. Images are ``--side`` px PNG files on disk,
8 subjects, sent as 512 px JPEG: outputs through the judge views that sampling writes beside its PNGs
(``--no-views``: decoded and re-encoded by the judge, as for images made elsewhere), references encoded
once per slice. The whole ``judge_stage`` call is timed (record log, image reading and encoding,
provider, answers). The table gives the median efficiency with its min..max.

``--pairwise``: the same for the pairwise A/B judge (``pairwise_stage``): two systems with different
outputs, each (pair, item) asked in both orders (two requests, three images each: reference, A, B).

``--count-ab``: the judge cost of a 3-system A/B on a DreamBench-sized benchmark (30 subjects x 25
prompts, one image per prompt and system; a zero-latency server counts the requests it receives):
pointwise (CP + PF per image) against pairwise (both orders per item and pair of systems).

    .venv/bin/python -m benchmarks.eval_judge_throughput [--latency 0.2] [--levels 1,2,4,8,16,32] [--pairwise]
    .venv/bin/python -m benchmarks.eval_judge_throughput --count-ab
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.throughput_table import print_efficiency_table
from dsd.eval.judge import Judge
from dsd.eval.layout import load_benchmark
from dsd.eval.pairwise import PairJudge, pairwise_stage
from dsd.eval.sampling import VIEW_QUALITY, VIEW_SIDE
from dsd.eval.stages import ImageSource, collect_folder, judge_stage
from dsd.providers import ProviderConfig, make_provider
from tests.support.llm_server import server_process

SUBJECTS = 8


def _judgement(request):
    props = request.json_schema["properties"]
    if "identity" in props:  # the pairwise judge
        return {**{k: "observed" for k in props}, "identity": "A", "prompt": "tie"}
    return {**{k: "observed" for k in props if k != "score"}, "score": 3}


def _photo(seed: int, side: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(x / (30 + seed % 7)), 128 + 80 * np.cos(y / 45), (x + y) / (2 * side / 255)], -1)
    return Image.fromarray(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype("uint8"))


def make_run(root: Path, images: int, side: int, views: bool, systems: int = 1, subjects: int = SUBJECTS,
             per_subject: int | None = None):  # fmt: skip
    """A benchmark of ``subjects`` subjects and enough prompts, plus one output PNG per (subject, prompt) and system
    (each system its own pictures) and, with ``views``, the judge view sampling would have written for it."""
    per_subject = per_subject or -(-images // subjects)
    for s in range(subjects):
        (root / "bench" / "subjects" / f"s{s}").mkdir(parents=True)
        _photo(1000 + s, side).save(root / "bench" / "subjects" / f"s{s}" / "ref.png")
        for m in range(systems):
            (root / f"outputs{m}" / f"s{s}").mkdir(parents=True)
            for k in range(per_subject):
                photo = _photo(s * 1000 + k + 100_000 * m, side)
                photo.save(root / f"outputs{m}" / f"s{s}" / f"p{k:02d}.png")
                if views:
                    (root / f"views{m}" / f"s{s}").mkdir(parents=True, exist_ok=True)
                    view = photo.copy()
                    view.thumbnail((VIEW_SIDE, VIEW_SIDE))
                    view.save(root / f"views{m}" / f"s{s}" / f"p{k:02d}.jpg", quality=VIEW_QUALITY)
    lines = [json.dumps({"prompt": f"the subject in scene number {k}, photographed at dusk"}) for k in range(per_subject)]
    (root / "bench" / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    bench = load_benchmark(root / "bench")
    rows = []
    for m in range(systems):
        got = collect_folder(ImageSource(f"system{m}", root / f"outputs{m}"), bench)[:images]
        for row in got if views else []:
            row["view"] = str(root / f"views{m}" / row["subject"] / f"{row['prompt_id']}.jpg")
        rows += got
    return bench, rows


def _provider(base_url: str, root: Path, concurrency: int):
    return make_provider(ProviderConfig(kind="openai", model="bench", base_url=base_url, max_concurrency=concurrency,
                                        cache_dir=str(root / "cache"), timeout_s=30))  # fmt: skip


def measure(base_url: str, root: Path, concurrency: int, images: int, side: int, views: bool, pairwise: bool = False) -> float:
    """Seconds for the whole stage: ``images`` images (pointwise) or (pair, item)s (pairwise, two systems)."""
    bench, rows = make_run(root, images, side, views, systems=2 if pairwise else 1)
    with _provider(base_url, root, concurrency) as provider:
        t0 = time.perf_counter()
        if pairwise:
            result = pairwise_stage(rows, bench, PairJudge(provider), root / "scores", progress=False)
        else:
            result = judge_stage(rows, bench, Judge(provider), root / "scores", progress=False)
        elapsed = time.perf_counter() - t0
    done = result.items if pairwise else len(rows)
    if result.judged != done or result.failures:
        raise SystemExit(f"judge stage incomplete: {result}")
    return elapsed


def count_ab(base_url: str, root: Path, systems: int = 3, subjects: int = 30, prompts: int = 25) -> None:
    """Requests of pointwise and pairwise judging for a ``systems``-system A/B on subjects x prompts."""
    bench, rows = make_run(root, subjects * prompts, 64, views=False, systems=systems, subjects=subjects, per_subject=prompts)
    with _provider(base_url, root, 32) as provider:
        judge_stage(rows, bench, Judge(provider), root / "scores", progress=False)
        pointwise = provider.usage.requests
        pairwise_stage(rows, bench, PairJudge(provider), root / "scores", progress=False)
        pairs = provider.usage.requests - pointwise
    n_pairs = systems * (systems - 1) // 2
    print(f"{systems}-system A/B, {subjects} subjects x {prompts} prompts ({len(rows)} images): pointwise {pointwise} "
          f"requests ({pointwise // len(rows)} per image), pairwise {pairs} requests ({n_pairs} pairs x "
          f"{subjects * prompts} items x 2 orders)")  # fmt: skip
    per_pair = pairs / n_pairs
    print(f"per system pair: pairwise {per_pair:.0f} requests = {per_pair / (pointwise / n_pairs):.2f}x the pointwise run's "
          f"requests per pair ({pointwise / n_pairs:.0f}; goal <= 2x), {per_pair / (2 * pointwise / systems):.2f}x "
          f"pointwise scoring of those two systems alone ({2 * pointwise / systems:.0f})")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--levels", default="1,2,4,8,16,32")
    ap.add_argument("--rounds", type=int, default=30, help="requests per worker (steady state)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--side", type=int, default=512, help="side of the reference and output PNG files")
    ap.add_argument("--no-views", action="store_true", help="no judge views: the judge decodes and encodes every output")
    ap.add_argument("--pairwise", action="store_true", help="the pairwise A/B judge instead of the pointwise one")
    ap.add_argument("--count-ab", action="store_true", help="count the requests of a 3-system A/B on 30 x 25 and exit")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "bench")
    levels = [int(x) for x in args.levels.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="dsd-judge-bench-"))
    if args.count_ab:
        try:
            with server_process(0.0, responder=_judgement) as srv:
                count_ab(srv.openai_base_url, tmp / "ab")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    rows = []
    try:
        with server_process(args.latency, responder=_judgement) as srv:
            measure(srv.openai_base_url, tmp / "warm", 2, 4, args.side, not args.no_views, args.pairwise)  # SDK import, first client
            for c in levels:
                requests = args.rounds * c
                effs, secs, peaks = [], [], []
                for rep in range(args.reps):
                    srv.reset()
                    dt = measure(srv.openai_base_url, tmp / f"c{c}_{rep}", c, requests // 2, args.side, not args.no_views,
                                 args.pairwise)  # fmt: skip
                    effs.append(requests / dt / (c / args.latency))
                    secs.append(dt)
                    peaks.append(srv.stats()["max_in_flight"])
                    shutil.rmtree(tmp / f"c{c}_{rep}", ignore_errors=True)
                rows.append((c, requests, statistics.median(secs), effs, max(peaks)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    views = "decoded + encoded by the judge" if args.no_views else "judge views written by sampling"
    title = (f"judge throughput, FakeLLMServer latency {args.latency * 1000:.0f} ms (own process), {args.side}px PNG "
             f"outputs sent as 512px JPEG ({views}), 2 requests per {'(pair, item): both orders' if args.pairwise else 'image'}, "
             f"{args.reps} reps per level, "
             f"{os.cpu_count()} CPU cores")  # fmt: skip
    print_efficiency_table(title, "requests", rows, args.latency)

if __name__ == "__main__":
    main()
