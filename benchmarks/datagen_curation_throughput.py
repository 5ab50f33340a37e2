"""Curation throughput vs concurrency against FakeLLMServer with a fixed 200 ms latency.

Goal: >= 80 % of the ideal concurrency / latency pairs per second, up to 32 in flight.

Method: the fake server runs in its own process (it stands in for a remote API: its CPU is not
client overhead). Every level runs ``--reps`` times on a fresh verdict log and a fresh answer cache
(no cache hits), ``--rounds`` requests per worker, panels as the panels stage writes them
(``--panel-side`` px PNG files, sent as ``curate.image_format`` at ``curate.max_image_side``);
the table gives the median efficiency with its min..max. The whole ``run_curate`` call is timed
(provider start, log, panel encoding included).

    .venv/bin/python -m benchmarks.datagen_curation_throughput [--latency 0.2] [--levels 1,2,4,8,16,32]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.throughput_table import print_efficiency_table
from datagen.config import CurateConfig
from datagen.curate import panel_encoding, run_curate
from datagen.vlm_view import ViewSpec, encode_view, view_path
from dsd.providers import ProviderConfig
from tests.support.llm_server import server_process

VERDICT = {"subject": "a ball", "description_a": "red ball", "description_b": "red ball", "same_identity": True,
           "confidence": 0.9, "reason": "same", "caption": "a red ball"}  # fmt: skip


def _verdict(_request):
    return VERDICT


def make_workdir(w: Path, n_pairs: int, side: int, view: ViewSpec | None) -> None:
    """Grids of 3 panels (pairs 0-1, 0-2, 1-2 as the panels stage makes them), photo-like PNGs, plus the
    VLM views the panels stage writes when curation is configured (``view``)."""
    (w / "panels" / "panels").mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    with open(w / "panels" / "pairs.jsonl", "w") as fh:
        for g in range((n_pairs + 2) // 3):
            paths = []
            for k in range(3):
                p = w / "panels" / "panels" / f"g{g:05d}_{k}.png"
                img = np.stack([128 + 100 * np.sin(x / (30 + g % 7 + k)), 128 + 80 * np.cos(y / 45), (x + y) / (2 * side / 255)], -1)
                panel = Image.fromarray(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype("uint8"))
                panel.save(p)
                if view is not None:
                    view_path(p, view).write_bytes(encode_view(panel, view))
                paths.append(str(p))
            for a, b in ((0, 1), (0, 2), (1, 2)):
                fh.write(json.dumps({"id": f"g{g:05d}_{a}_{b}", "grid_id": f"g{g:05d}", "ref_path": paths[a],
                                     "target_path": paths[b], "ref_index": a, "target_index": b}) + "\n")  # fmt: skip


def curate_config(args) -> CurateConfig:
    args.image_format = args.image_format or "jpeg"
    return CurateConfig(chunk=args.chunk, max_image_side=args.max_side, image_format=args.image_format)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--levels", default="1,2,4,8,16,32")
    ap.add_argument("--rounds", type=int, default=30, help="requests per worker (pairs = rounds x concurrency): steady state")
    ap.add_argument("--reps", type=int, default=2, help="repetitions per level (median reported)")
    ap.add_argument("--panel-side", type=int, default=512, help="side of the panel PNG files")
    ap.add_argument("--max-side", type=int, default=512, help="curate.max_image_side")
    ap.add_argument("--image-format", default=None, choices=["png", "jpeg"],
                    help="curate.image_format (default jpeg)")
    ap.add_argument("--chunk", type=int, default=256, help="curate.chunk")
    ap.add_argument("--no-views", action="store_true",
                    help="no VLM views from the panels stage: curation decodes and encodes every panel itself")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    cfg = curate_config(args)
    view = None if args.no_views else panel_encoding(cfg)
    root = Path(tempfile.mkdtemp(prefix="dsd-curate-bench-"))
    rows = []
    try:
        with server_process(args.latency, responder=_verdict) as srv:
            base_url = srv.openai_base_url
            # warm-up outside the timings: SDK import, first client, first connection
            make_workdir(root / "warm", 3, args.panel_side, view)
            run_curate(cfg, root / "warm", vlm=ProviderConfig(
                kind="openai", model="bench", base_url=base_url, cache_dir=str(root / "warm" / "c")), progress=False)  # fmt: skip
            for c in levels:
                n = args.rounds * c
                effs, peaks, secs = [], [], []
                for rep in range(args.reps):
                    w = root / f"c{c}_{rep}"
                    make_workdir(w, n, args.panel_side, view)
                    vlm = ProviderConfig(kind="openai", model="bench", base_url=base_url, max_concurrency=c,
                                         cache_dir=str(w / "cache"))  # fmt: skip
                    srv.reset()
                    t0 = time.perf_counter()
                    s = run_curate(cfg, w, vlm=vlm, progress=False)
                    dt = time.perf_counter() - t0
                    if s.items_in < n or s.items_out != s.items_in:
                        raise SystemExit(s.render())
                    effs.append(s.items_in / dt / (c / args.latency))
                    secs.append(dt)
                    peaks.append(srv.stats()["max_in_flight"])
                    shutil.rmtree(w, ignore_errors=True)
                rows.append((c, s.items_in, statistics.median(secs), effs, max(peaks)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    title = (f"curation throughput, FakeLLMServer latency {args.latency * 1000:.0f} ms (own process), "
             f"{args.panel_side}px PNG panels sent as {args.image_format} <= {args.max_side}px, {args.reps} reps per "
             f"level, {'panels decoded+encoded by curation' if args.no_views else 'VLM views written by the panels stage'}")
    print_efficiency_table(title, "pairs", rows, args.latency)

if __name__ == "__main__":
    main()
