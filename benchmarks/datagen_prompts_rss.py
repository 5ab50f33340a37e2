"""Peak RSS of the prompts stage over N captions: it must stream (constant memory).

Generates an N-caption parquet (LAION-like TEXT column) in a temp dir, runs the captions stage,
then the prompts stage, each in a child process, and reports the child's peak RSS
(resource.getrusage(RUSAGE_SELF).ru_maxrss measured inside the child, so a parent's memory or
another child never counts). Run at two sizes: flat RSS across sizes = streaming.

    .venv/bin/python -m benchmarks.datagen_prompts_rss [--sizes 10000,100000] [--llm-size 5000]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Run with cwd=REPO: `python -c` puts the cwd on sys.path, so the toolkit imports even when not installed.
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from datagen.config import CaptionsConfig, PromptsConfig
stage, work, src, mode, base_url = sys.argv[1:6]
work = Path(work)
t0 = time.perf_counter()
if stage == "captions":
    from datagen.captions import run_captions
    s = run_captions(CaptionsConfig(sources=(src,), language="any", min_words=1), work / "captions", progress=False)
else:
    from datagen.prompts import run_prompts
    llm = None
    if mode == "llm":
        from dsd.providers import ProviderConfig
        llm = ProviderConfig(kind="openai", model="bench", base_url=base_url, max_concurrency=16)
    s = run_prompts(PromptsConfig(mode=mode, layouts=("2x2", "1x3")), work / "captions" / "captions.jsonl",
                    work / ("prompts_" + mode), llm=llm, progress=False)
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"out": s.items_out, "rejected": s.rejected, "seconds": time.perf_counter() - t0,
                  "peak_mb": peak_kb / 1024, "extra": {k: v for k, v in s.extra.items() if "diversity" in k}}))
"""

NOUNS = ["teapot", "bicycle", "fox", "lighthouse", "backpack", "robot", "cat", "sneaker", "guitar", "castle",
         "owl", "camera", "violin", "lantern", "sailboat", "cactus", "helmet", "clock", "kite", "piano"]
ADJS = ["red", "vintage", "ceramic", "wooden", "tiny", "giant", "blue", "golden", "rusty", "fluffy", "glass",
        "striped", "ancient", "neon", "leather"]
PLACES = ["on a table", "in a forest", "on a beach", "in a city street", "in the snow", "on a shelf", "at night"]


def make_parquet(path: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    texts = [f"A photo of a {rng.choice(ADJS)} {rng.choice(ADJS)} {rng.choice(NOUNS)} number {i} {rng.choice(PLACES)}"
             for i in range(n)]
    pq.write_table(pa.table({"URL": [f"http://x/{i}.jpg" for i in range(n)], "TEXT": texts}), path,
                   row_group_size=10_000)


def child(stage: str, work: Path, src: Path, mode: str = "template", base_url: str = "") -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, stage, str(work), str(src), mode, base_url],
                         cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--llm-size", type=int, default=5000, help="captions for the LLM-mode run (0 = skip)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dsd-prompts-rss-") as tmp:
        root = Path(tmp)
        for n in [int(x) for x in args.sizes.split(",")]:
            src = root / f"laion_{n}.parquet"
            make_parquet(src, n)
            work = root / f"w{n}"
            cap = child("captions", work, src)
            t0 = time.perf_counter()
            pr = child("prompts", work, src)
            print(f"{n:>7} captions | captions stage peak RSS {cap['peak_mb']:.0f} MB ({cap['seconds']:.1f} s) | "
                  f"prompts (template) peak RSS {pr['peak_mb']:.0f} MB, {pr['out']} prompts in {pr['seconds']:.1f} s "
                  f"(wall {time.perf_counter() - t0:.1f} s) | {json.dumps({k: round(v, 3) for k, v in pr['extra'].items()})}")
        if args.llm_size:
            from tests.support.llm_server import FakeLLMServer

            def respond(req):
                words = req.prompt.split("\n", 1)[0].split()
                return {"subject": " ".join(words[4:8]), "subject_kind": "object", "layout": "2x2",
                        "panels": [{"expression": "", "pose": f"view {i} {words[-1]}", "lighting": f"light {i}",
                                    "setting": f"place {i} {words[6]}"} for i in range(4)]}

            n = args.llm_size
            src = root / f"laion_llm_{n}.parquet"
            make_parquet(src, n)
            work = root / f"llm{n}"
            child("captions", work, src)
            with FakeLLMServer(responder=respond) as srv:
                pr = child("prompts", work, src, "llm", srv.openai_base_url)
            print(f"{n:>7} captions | prompts (llm, fake server) peak RSS {pr['peak_mb']:.0f} MB, {pr['out']} prompts, "
                  f"{pr['rejected']} rejected, {pr['seconds']:.1f} s")


if __name__ == "__main__":
    main()
