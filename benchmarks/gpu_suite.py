"""The one prepared GPU measurement: every GPU figure of the project in one command, under 8 minutes.

    python -m benchmarks.gpu_suite --out DIR           # CUDA, FLUX.1-dev shapes, random weights made on the GPU
    python -m benchmarks.gpu_suite --tiny --out DIR    # CPU, toy shapes: the same code paths (part of the tests)

Parts (canvas 512x1024, the authors' default): 1 ``sampling`` seconds per step through ComfyUI's own FLUX with
this pack's nodes (plain, DSD, DSD true CFG, the authors' structure); 2 ``memory`` peak memory of the diffusion
model + adapter in bf16 and fp8; 3 ``training`` one step of the real trainer with AdamW and 8-bit AdamW, and
AdamW on a multi-reference canvas of k = 3 (four frames), next to ``python -m training estimate``;
4 ``fp8_matmul`` ComfyUI's fp8 ops vs bf16. Each part has a time cap and reports
"skipped (time)" instead of overrunning; a part that fails reports why and the others still run. Writes
``DIR/gpu_figures.json`` (after every part: a killed run keeps what it measured) and ``DIR/gpu_figures.md``,
and prints the table. On a machine without network: ``scripts/gpu_bundle.sh`` (see the README).
"""

from __future__ import annotations

import time

PROCESS_START = time.monotonic()  # the budget counts imports too

import argparse  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from benchmarks.comfy_bench_host import REPO_ROOT  # noqa: E402
from benchmarks.gpu_common import FULL, TINY, Deadline, Device, OutOfTime  # noqa: E402
from dsd.io import atomic_write_json, atomic_write_text  # noqa: E402

logger = logging.getLogger("gpu_suite")

PARTS = ("sampling", "memory", "training", "fp8_matmul")
# Seconds per part on one H100/H200 (each also stops at what is left of --budget-s).
CAPS_S = {"sampling": 150.0, "memory": 90.0, "training": 150.0, "fp8_matmul": 60.0}
SUITE_VERSION = 1
# What a part may raise that must not cost the other parts' figures on a one-shot GPU run: CUDA out of memory
# (a RuntimeError), a missing package, and the API drift of another torch / diffusers / peft / ComfyUI build.
PART_ERRORS = (RuntimeError, ImportError, OSError, ValueError, TypeError, AttributeError, KeyError, IndexError, AssertionError)


def run_parts(args, device: Device, report: dict, out: Path) -> None:
    from benchmarks.gpu_sampling import make_bench, part_fp8_matmul, part_memory, part_sampling
    from benchmarks.gpu_training import part_training

    shapes = TINY if args.tiny else FULL
    deadline = Deadline(args.budget_s - (time.monotonic() - PROCESS_START))
    bench = None
    runners: dict[str, Callable] = {
        "sampling": lambda clock: part_sampling(bench, clock),
        "memory": lambda clock: part_memory(bench, clock),
        "training": lambda clock: part_training(shapes, device, clock),
        "fp8_matmul": lambda clock: part_fp8_matmul(bench, clock),
    }
    for name in args.parts:
        clock = deadline.part(name, CAPS_S[name])
        t = time.monotonic()
        try:
            if bench is None and name != "training":
                bench = make_bench(shapes, device, args.threads)  # the ComfyUI host + adapter file, once
            result = runners[name](clock)
            entry = {"status": result.pop("status", "measured"), **result}
        except OutOfTime as exc:
            entry = {"status": "skipped (time)", "detail": str(exc)}
        except PART_ERRORS as exc:
            logger.exception("part %s failed", name)
            # the traceback's end goes into the JSON: the GPU run may be the only one for a while
            entry = {"status": f"failed: {type(exc).__name__}: {str(exc)[:300]}", "traceback": traceback.format_exc()[-2000:]}
        device.free()
        entry["seconds"] = time.monotonic() - t
        report["parts"][name] = entry
        report["total_seconds"] = time.monotonic() - PROCESS_START
        atomic_write_json(out / "gpu_figures.json", report)


def header(args, device: Device) -> dict:
    shapes = TINY if args.tiny else FULL
    return {
        "suite_version": SUITE_VERSION, "mode": "tiny" if args.tiny else "gpu", "device": device.name,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "budget_s": args.budget_s, "shapes": asdict(shapes), "import_seconds": time.monotonic() - PROCESS_START,
        "note": "toy shapes on the CPU: checks the suite's code paths; not GPU figures" if args.tiny else
                "random weights at FLUX.1-dev shapes, created on the GPU",
        "parts": {},
    }  # fmt: skip


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**30:.3f} GiB" if x >= 2**27 else f"{x / 2**20:.2f} MiB"


def _rows_sampling(p: dict) -> list[tuple[str, str, str]]:
    s = p["seconds_per_step"]
    names = {"plain": "plain FLUX", "dsd": "DSD", "dsd_cfg": "DSD true CFG (DSDGuider, batched)",
             "authors_cfg": "authors' structure (3 calls, unmerged LoRA)"}  # fmt: skip
    rows = [(f"s/step {names[k]}", f"{v['median']:.4g} [{v['min']:.4g}..{v['max']:.4g}]", "") for k, v in s.items()]
    rows += [("ratio DSD / plain", f"{p['ratio_dsd_over_plain']:.3f}", p["goals"]["ratio_dsd_over_plain"]),
             ("true CFG: ours vs authors' (speed-up)", f"{p['speedup_ours_over_authors_cfg']:.3f}x", p["goals"]["speedup_ours_over_authors_cfg"])]  # fmt: skip
    bound = p["bound_seconds_per_image"]
    rows += [(f"s/image (28 steps) {names[k]}", f"{v:.4g}", f"bound {bound[k]:.3g} s at {p['bound_peak_tflops']:.0f} TFLOP/s")
             for k, v in p["seconds_per_image"].items()]  # fmt: skip
    rows.append(("TFLOP per forward", f"{p['tflop_per_forward']:.4g} (+{p['tflop_per_forward_unmerged_lora_extra']:.3g} unmerged LoRA)", ""))
    return rows


def _rows_memory(p: dict) -> list[tuple[str, str, str]]:
    rows = [(f"peak {k}", _gib(v["bytes"]), "") for k, v in p["models"].items()]
    rows.append(("adapter file", _gib(p["adapter_file_bytes"]), ""))
    rows += [(f"adapter cost / file size ({k.rsplit('_', 1)[-1]})", f"{v:.3f}", p["goals"]["adapter_cost_over_file"])
             for k, v in p.items() if k.startswith("adapter_cost_over_file_")]  # fmt: skip
    rows.append(("DSD fp8 peak", f"{p['dsd_fp8_gib']:.3f} GiB", p["goals"]["dsd_fp8_gib"]))
    rows.append(("memory source", p["source"], ""))
    return rows


def _rows_training(p: dict) -> list[tuple[str, str, str]]:
    rows = []
    for opt, r in p.items():
        if not isinstance(r, dict):  # the part's own status and time
            continue
        if r.get("status") != "measured":
            rows.append((opt, r.get("status", "?"), r.get("detail", "")))
            continue
        rows += [
            (f"{opt}: s/step", f"{r['seconds_per_step']:.4g}", f"predicted {r['predicted_seconds_per_step']:.4g} "
             f"(measured/predicted {r['ratio_seconds_measured_over_predicted']:.3g})"),
            (f"{opt}: memory", _gib(r["memory_bytes"]), f"predicted {_gib(r['predicted_memory_bytes'])} "
             f"(measured/predicted {r['ratio_memory_measured_over_predicted']:.3f})"),
            (f"{opt}: MFU", f"{r['mfu']:.3g} of {r['mfu_peak_tflops']:.0f} TFLOP/s", f"estimator assumes {r['predicted_mfu']:.2f}"),
            (f"{opt}: FLOP per step counted / predicted", f"{r['ratio_flops_counted_over_predicted']:.3f}",
             "within 0.8..1.2 or fix training/estimate.py"),
        ]  # fmt: skip
    one, three = p.get("adamw", {}), p.get("adamw_k3", {})
    if one.get("status") == three.get("status") == "measured":  # what three references cost against one
        rows.append(("k = 3 / k = 1: s/step", f"{three['seconds_per_step'] / one['seconds_per_step']:.3g}",
                     f"predicted {three['flops_per_step_predicted'] / one['flops_per_step_predicted']:.3g} (FLOPs)"))  # fmt: skip
    return rows


def _rows_fp8(p: dict) -> list[tuple[str, str, str]]:
    rows = [(f"s/step {k}", f"{v:.4g}", "") for k, v in p["seconds_per_step"].items()]
    rows += [(k.replace("_", " "), f"{v:.3f}x", "") for k, v in p.items() if k.startswith("speedup_")]
    rows.append(("fp8 linears that fell back to upcasting (one 2-step run)", f"{p['fp8_fallbacks']} of {p['fp8_linear_calls']}",
                 p["fp8_fallback_example"][:120] or "none"))  # fmt: skip
    return rows


ROWS = {"sampling": _rows_sampling, "memory": _rows_memory, "training": _rows_training, "fp8_matmul": _rows_fp8}


def render_markdown(report: dict) -> str:
    lines = [
        f"# DSD GPU figures ({report['mode']}: {report['device']}, torch {report['torch']}, CUDA {report['cuda']})",
        "", f"{report['note']}. Canvas {report['shapes']['height']}x{report['shapes']['width']}, "
        f"total {report.get('total_seconds', 0):.0f} s (imports {report['import_seconds']:.0f} s).", "",
        "| part | figure | value | goal / prediction |", "|---|---|---|---|",
    ]  # fmt: skip
    for name in PARTS:
        part = report["parts"].get(name)
        if part is None:
            continue
        rows = ROWS[name](part) if part["status"] == "measured" else [("status", part["status"], part.get("detail", ""))]
        lines += [f"| {name} | {a} | {b} | {c} |" for a, b, c in rows]
        lines.append(f"| {name} | part time | {part['seconds']:.1f} s | cap {CAPS_S[name]:.0f} s |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, toy shapes (the test suite's check of this script)")
    ap.add_argument("--out", required=True, type=Path, help="folder for gpu_figures.json and gpu_figures.md")
    ap.add_argument("--budget-s", type=float, default=450.0, help="the whole run's seconds, imports included (default 450)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 with --tiny, else 8)")
    args = ap.parse_args(argv)
    args.threads = args.threads or (1 if args.tiny else 8)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        ap.error(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = Device(args.tiny)
    args.out.mkdir(parents=True, exist_ok=True)
    report = header(args, device)
    report["repo"] = str(REPO_ROOT)
    run_parts(args, device, report, args.out)
    table = render_markdown(report)
    atomic_write_text(args.out / "gpu_figures.md", table)
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
