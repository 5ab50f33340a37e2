"""Peak memory of `python -m dsd convert --base ... --svd-rank 16` against the size of its inputs.

Builds a >= 1 GB release fixture at FLUX's real width (hidden 3072: 24 heads x 128; one double
and one single block, fp32), a matching BFL/ComfyUI base file in which a few tensors are
perturbed (one inside the fused qkv, one inside the single block's fused linear1, one bias),
runs the conversion with the diff report and SVD extraction in a subprocess, and measures the
child's peak resident set (``wait4`` ru_maxrss, plus psutil polling for the file-backed part).
The goal: peak RSS well below the size of either file, i.e. the diff really streams.

    .venv/bin/python -m benchmarks.convert_rss [--dir /tmp/dsd_convert_rss] [--single-blocks 1] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_fixture(out: Path, single_blocks: int) -> None:
    import torch
    from safetensors.torch import save_file

    from dsd.tiny import FULL_WIDTH_TRANSFORMER_CONFIG, write_release
    from dsd.weights.layout import diffusers_to_bfl

    cfg = {**FULL_WIDTH_TRANSFORMER_CONFIG, "num_single_layers": single_blocks}
    release = write_release(out / "release", seed=0, shards=2, rank=4, config=cfg)
    state = {k: v.clone() for k, v in release.model.transformer.state_dict().items()}
    del release
    gen = torch.Generator().manual_seed(0)
    hidden = 3072
    # release = base + delta: a rank-8 delta (rank 16 recovers it), a full-rank one, a bias (not representable)
    k = "transformer_blocks.0.attn.to_k.weight"
    state[k] -= 1e-3 * torch.randn(hidden, 8, generator=gen) @ torch.randn(8, hidden, generator=gen)
    k = "transformer_blocks.0.ff.net.2.weight"
    state[k] -= 1e-4 * torch.randn(state[k].shape, generator=gen)
    if single_blocks:
        k = "single_transformer_blocks.0.proj_mlp.weight"
        state[k] -= 1e-3 * torch.randn(state[k].shape[0], 4, generator=gen) @ torch.randn(4, hidden, generator=gen)
    state["transformer_blocks.0.attn.to_q.bias"] -= 1e-3
    base = out / "flux1-dev.safetensors"
    save_file({k: v.contiguous() for k, v in diffusers_to_bfl(state).items()}, base)


def run_measured(cmd: list[str]) -> dict[str, float]:
    import psutil

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"rss": 0, "anon": 0, "file": 0}
    stop = threading.Event()

    def poll() -> None:
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                rss = p.memory_info().rss
                anon = file_ = 0
                with open(f"/proc/{proc.pid}/status") as fh:
                    for line in fh:
                        if line.startswith("RssAnon:"):
                            anon = int(line.split()[1]) * 1024
                        elif line.startswith("RssFile:"):
                            file_ = int(line.split()[1]) * 1024
                peak["rss"] = max(peak["rss"], rss)
                peak["anon"] = max(peak["anon"], anon)
                peak["file"] = max(peak["file"], file_)
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.02)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    t0 = time.perf_counter()
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    t.join()
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out}\n{err[-3000:]}")
    return {"maxrss": rusage.ru_maxrss * 1024, "poll_rss": peak["rss"], "poll_anon": peak["anon"], "poll_file": peak["file"], "wall": wall, "stdout": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/dsd_convert_rss"))
    ap.add_argument("--single-blocks", type=int, default=1)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep the fixture (several GB) afterwards")
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_only:
        build_fixture(args.dir, args.single_blocks)
        return 0
    if args.dir.exists():
        shutil.rmtree(args.dir)
    t0 = time.perf_counter()
    # Build in a child: a forked child's ru_maxrss starts from its parent's RSS, so this process
    # must stay small (no torch) for the measurements below to mean anything.
    subprocess.run([sys.executable, "-m", "benchmarks.convert_rss", "--build-only", "--dir", str(args.dir.resolve()),
                    "--single-blocks", str(args.single_blocks)], cwd=ROOT, check=True, stderr=subprocess.DEVNULL)  # fmt: skip
    t_build = time.perf_counter() - t0
    files = {
        "transformer": args.dir / "release" / "transformer",
        "lora": args.dir / "release" / "pytorch_lora_weights.safetensors",
        "base": args.dir / "flux1-dev.safetensors",
    }
    release_bytes = sum(p.stat().st_size for p in files["transformer"].glob("*.safetensors"))
    base_bytes = files["base"].stat().st_size
    lora_bytes = files["lora"].stat().st_size
    py = sys.executable
    floor = run_measured([py, "-c", "import torch, safetensors, tqdm, dsd.convert, dsd.weights.diff"])
    out = args.dir / "dsd_adapter.safetensors"
    report = args.dir / "report.json"
    conv = run_measured([py, "-m", "dsd", "convert", "--transformer", str(files["transformer"]), "--lora", str(files["lora"]),
                         "--out", str(out), "--base", str(files["base"]), "--report", str(report),
                         "--svd-rank", str(args.rank), "--no-progress"])  # fmt: skip
    rep = json.loads(report.read_text())
    gib = 2**30
    rows = [
        ("release transformer (2 shards, fp32)", release_bytes),
        ("base FLUX file (BFL keys, fp32)", base_bytes),
        ("release + base", release_bytes + base_bytes),
        ("LoRA file", lora_bytes),
        ("adapter written", out.stat().st_size),
        ("import floor: python + torch + dsd (maxrss)", floor["maxrss"]),
        ("  of which anonymous / file-backed (poll)", None),
        ("convert peak RSS (wait4 ru_maxrss)", conv["maxrss"]),
        ("convert peak RSS (psutil poll)", conv["poll_rss"]),
        ("  of which anonymous (poll)", conv["poll_anon"]),
        ("  of which file-backed (poll)", conv["poll_file"]),
    ]
    print(f"fixture built in {t_build:.0f}s; convert ran {conv['wall']:.1f}s on {os.cpu_count()} CPU cores")
    print(f"{'':<46}{'GiB':>8}")
    for name, v in rows:
        if v is None:
            print(f"{name:<46}{floor['poll_anon'] / gib:>8.3f} / {floor['poll_file'] / gib:.3f}")
        else:
            print(f"{name:<46}{v / gib:>8.3f}")
    print(f"peak RSS / release size: {conv['maxrss'] / release_bytes:.2f};  peak RSS / (release + base): "
          f"{conv['maxrss'] / (release_bytes + base_bytes):.2f};  peak above import floor: {(conv['maxrss'] - floor['maxrss']) / gib:.3f} GiB")  # fmt: skip
    print(f"report: {rep['tensors_differing']} of {rep['tensors_compared']} tensors differ: {[d['key'] for d in rep['differing']]}")
    svd = rep["svd"]
    print(f"SVD rank {svd['rank']}: " + ", ".join(f"{t['key']} err {t['rel_error']:.3g}" for t in svd["tensors"])
          + f"; overall {svd['overall_rel_error']:.3g}; not representable: {svd['not_representable']}")  # fmt: skip
    if not args.keep:
        shutil.rmtree(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
