"""Curation throughput vs concurrency against FakeLLMServer with a fixed 200 ms latency.

Goal: >= 80 % of the ideal concurrency / latency pairs per second, up to 32 in flight. Each
concurrency level runs on a fresh verdict log and a fresh answer cache (no cache hits), with
small panels so image encoding is not what is measured.

    .venv/bin/python benchmarks/datagen_curation_throughput.py [--latency 0.2] [--levels 1,2,4,8,16,32]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datagen.config import CurateConfig  # noqa: E402
from datagen.curate import run_curate  # noqa: E402
from dsd.providers import ProviderConfig  # noqa: E402
from dsd.testing.llm_server import FakeLLMServer  # noqa: E402

VERDICT = {"subject": "a ball", "description_a": "red ball", "description_b": "red ball", "same_identity": True,
           "confidence": 0.9, "reason": "same", "caption": "a red ball"}


def make_workdir(w: Path, n_pairs: int) -> None:
    (w / "panels" / "panels").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(w / "panels" / "pairs.jsonl", "w") as fh:
        for i in range(n_pairs):
            paths = []
            for k in range(2):
                p = w / "panels" / "panels" / f"g{i:05d}_{k}.png"
                Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")).save(p)
                paths.append(str(p))
            fh.write(json.dumps({"id": f"g{i:05d}_0_1", "grid_id": f"g{i:05d}", "ref_path": paths[0],
                                 "target_path": paths[1], "ref_index": 0, "target_index": 1}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--levels", default="1,2,4,8,16,32")
    ap.add_argument("--rounds", type=int, default=6, help="requests per worker (pairs = rounds x concurrency)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    root = Path(tempfile.mkdtemp(prefix="dsd-curate-bench-"))
    rows = []
    try:
        with FakeLLMServer(latency_s=args.latency, responder=lambda req: VERDICT) as srv:
            # warm-up outside the timings: SDK import, first client, first connection
            make_workdir(root / "warm", 2)
            run_curate(CurateConfig(), root / "warm", vlm=ProviderConfig(
                kind="openai", model="bench", base_url=srv.openai_base_url, cache_dir=str(root / "warm" / "c")),
                progress=False)
            srv.reset()
            for c in levels:
                n = args.rounds * c
                w = root / f"c{c}"
                make_workdir(w, n)
                cfg = ProviderConfig(kind="openai", model="bench", base_url=srv.openai_base_url,
                                     max_concurrency=c, cache_dir=str(w / "cache"))
                t0 = time.perf_counter()
                s = run_curate(CurateConfig(chunk=100_000), w, vlm=cfg, progress=False)
                dt = time.perf_counter() - t0
                assert s.items_out == n, s.render()
                rate = n / dt
                ideal = c / args.latency
                rows.append((c, n, dt, rate, ideal, rate / ideal, srv.max_in_flight))
                srv.reset()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"curation throughput, FakeLLMServer latency {args.latency * 1000:.0f} ms")
    print(f"{'conc':>5} {'pairs':>6} {'seconds':>8} {'pairs/s':>8} {'ideal':>7} {'efficiency':>10} {'peak':>5}")
    for c, n, dt, rate, ideal, eff, peak in rows:
        print(f"{c:>5} {n:>6} {dt:>8.2f} {rate:>8.2f} {ideal:>7.1f} {100 * eff:>9.1f}% {peak:>5}")
    worst = min(r[5] for r in rows)
    print(f"worst efficiency {100 * worst:.1f}% (goal >= 80%)")


if __name__ == "__main__":
    main()
