"""Does the provider layer keep N requests in flight? Throughput vs the ideal N / latency.

Curation-like requests (a 512x1024 panel pair image + a JSON schema verdict) against the local
FakeLLMServer with a fixed per-request latency, through the real openai / google-genai
clients. Efficiency = measured req/s / (concurrency / latency); the goal is >= 0.8 up to 32.
Each level runs ``--reps`` times (``--rounds`` requests per worker each); the table shows the
median efficiency and its min..max. The server runs in its own process by default (it stands in
for a remote API, so its CPU is not client overhead).

    .venv/bin/python -m benchmarks.providers_concurrency [--kind openai gemini] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time
from collections.abc import Iterator

import numpy as np
from PIL import Image

from dsd.providers import ChatRequest, ProviderConfig, image_to_png_bytes, make_provider
from tests.support.llm_server import FakeLLMServer, RemoteFakeServer, server_process

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "subject": {"type": "string"},
        "description_a": {"type": "string"},
        "description_b": {"type": "string"},
        "identical": {"type": "boolean"},
        "conclusion": {"type": "string"},
    },
    "required": ["subject", "description_a", "description_b", "identical", "conclusion"],
}


def pair_image(seed: int, kind: str) -> bytes:
    """A 512x1024 panel pair. ``jpeg``: photo-like (gradients + grain), about the size of a
    real FLUX panel pair as JPEG q90. ``noise-png``: incompressible worst case (~1.5 MB)."""
    rng = np.random.default_rng(seed)
    if kind == "noise-png":
        return image_to_png_bytes(Image.fromarray(rng.integers(0, 255, (512, 1024, 3), dtype=np.uint8)))
    y, x = np.mgrid[0:512, 0:1024].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / (60 + 10 * seed)), 128 + 80 * np.cos(y / 45), (x + y) / 6], -1)
    grain = rng.normal(0, 6, base.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@contextlib.contextmanager
def fake_server(latency: float, separate_process: bool) -> Iterator[FakeLLMServer | RemoteFakeServer]:
    """The stand-in API server, by default in its own process so its CPU does not compete with the client."""
    if separate_process:
        with server_process(latency) as srv:
            yield srv
    else:
        with FakeLLMServer(latency_s=latency) as srv:
            yield srv


def stats(srv) -> dict:
    return srv.stats() if isinstance(srv, RemoteFakeServer) else {"max_in_flight": srv.max_in_flight}


def run(kind: str, latency: float, levels: list[int], rounds: int, reps: int, image: str = "jpeg",
        separate_process: bool = True) -> list[tuple[int, int, float, list[float]]]:
    os.environ.setdefault("OPENAI_API_KEY", "bench")
    os.environ.setdefault("GEMINI_API_KEY", "bench")
    images = [pair_image(i, image) for i in range(4)]
    rows = []
    with fake_server(latency, separate_process) as srv:
        base = srv.openai_base_url if kind == "openai" else srv.gemini_base_url
        config = ProviderConfig(kind=kind, model="bench", base_url=base, timeout_s=30, max_concurrency=max(levels))
        with make_provider(config) as provider:
            list(provider.map([ChatRequest("warm-up")], concurrency=1))
            for c in levels:
                n = rounds * c
                effs, rates, peak = [], [], 0
                for rep in range(reps):
                    requests = [
                        ChatRequest(f"Pair {c}-{rep}-{i}: name the common subject, describe it in each image, decide "
                                    "whether they are identical, conclude.", images=(images[i % 4],),
                                    json_schema=VERDICT_SCHEMA)
                        for i in range(n)
                    ]  # fmt: skip
                    srv.reset()
                    start = time.perf_counter()
                    results = list(provider.map(requests, concurrency=c))
                    elapsed = time.perf_counter() - start
                    failures = sum(1 for _, r in results if isinstance(r, Exception))
                    if failures:
                        raise SystemExit(f"{failures} requests failed at concurrency {c}")
                    rates.append(n / elapsed)
                    effs.append(n / elapsed / (c / latency))
                    peak = max(peak, stats(srv)["max_in_flight"])
                rows.append((c, peak, statistics.median(rates), effs))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", nargs="+", default=["openai", "gemini"], choices=["openai", "gemini"])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--image", default="jpeg", choices=["jpeg", "noise-png"])
    parser.add_argument("--same-process", action="store_true", help="run the fake server in this process")
    parser.add_argument("--rounds", type=int, default=8, help="requests per worker per repetition")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per level (median reported)")
    args = parser.parse_args()
    size_kb = len(pair_image(0, args.image)) / 1024
    print(f"fake server latency {args.latency * 1000:.0f} ms, 512x1024 {args.image} ({size_kb:.0f} KiB) "
          "+ JSON schema per request, "
          f"{os.cpu_count()} CPU cores, server in {'this' if args.same_process else 'a separate'} process, "
          f"{args.rounds} requests per worker, {args.reps} reps per level")  # fmt: skip
    for kind in args.kind:
        print(f"\n{kind}")
        print(f"{'concurrency':>11} {'peak in flight':>14} {'req/s':>8} {'ideal':>8} {'efficiency median [min..max]':>30}")
        for c, peak, rate, effs in run(kind, args.latency, args.levels, args.rounds, args.reps, args.image,
                                       not args.same_process):  # fmt: skip
            med = statistics.median(effs)
            flag = "" if med >= 0.8 else "  < 0.8"
            spread = f"{med:.2f} [{min(effs):.2f}..{max(effs):.2f}]"
            print(f"{c:>11} {peak:>14} {rate:>8.1f} {c / args.latency:>8.1f} {spread:>30}{flag}")


if __name__ == "__main__":
    main()
