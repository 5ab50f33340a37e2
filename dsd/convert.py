"""``python -m dsd convert``: the authors' release -> one compact DSD adapter (+ diff vs FLUX.1-dev).

The release is a full FLUX transformer folder carrying ``c_embedder`` plus a LoRA file. The
adapter keeps what DSD adds (embedder + LoRA, ComfyUI-mapped keys) and nothing of FLUX, so it
runs on the user's own FLUX.1-dev. With ``--base`` the release's transformer is compared with
that FLUX.1-dev, streaming, and with ``--svd-rank`` any difference is extracted as an extra
LoRA, ``<out stem>.base_delta_lora.safetensors``.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import cli
from .cli_output import emit
from .io import atomic_save_safetensors, atomic_write_text
from .weights.adapter import DSDAdapter, save_adapter
from .weights.diff import DiffReport, diff_against_base, file_fingerprint, format_summary, report_json
from .weights.errors import WeightsError
from .weights.lora import LoraPair, lora_to_state_dict, parse_lora
from .weights.release import (
    RELEASE_LORA_NAME,
    find_release_parts,
    read_transformer_config,
    scan_release_transformer,
)
from .weights.safetensors_io import load_tensors, open_safetensors, shard_files

logger = logging.getLogger(__name__)

DELTA_SUFFIX = ".base_delta_lora.safetensors"


@dataclass
class StrayCheck:
    """The PEFT ``lora_A.default`` tensors saved inside the release transformer vs the LoRA file."""

    compared: int = 0
    differing: list[str] | None = None
    only_in_transformer: list[str] | None = None
    only_in_lora: list[str] | None = None

    @property
    def status(self) -> str:
        if self.compared == 0 and not self.only_in_transformer:
            return "absent"
        return "differs" if (self.differing or self.only_in_transformer or self.only_in_lora) else "match"


@dataclass
class ConvertResult:
    adapter_path: Path
    adapter: DSDAdapter
    stray: StrayCheck
    report: DiffReport | None = None
    report_path: Path | None = None
    delta_path: Path | None = None


def delta_lora_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + DELTA_SUFFIX)


def _resolve_transformer(path: Path) -> tuple[Path, Path | None]:
    if not path.exists():
        raise WeightsError(f"{path}: not found; --transformer needs the release's transformer folder")
    if path.is_file():
        raise WeightsError(f"{path}: is a file; --transformer needs the folder holding config.json and the safetensors")
    if not (path / "config.json").is_file() and not (path / "transformer" / "config.json").is_file():
        raise WeightsError(
            f"{path / 'config.json'}: missing. --transformer must be the release's transformer folder "
            "(config.json + diffusion_pytorch_model*.safetensors), as downloaded from primecai/dsd_model."
        )
    return find_release_parts(path)


def check_stray_lora(transformer_dir: Path, lora: dict[str, LoraPair]) -> StrayCheck:
    """Compare the transformer's ``<module>.lora_A/B.default.weight`` with the LoRA file, one tensor at a time."""
    check = StrayCheck(differing=[], only_in_transformer=[], only_in_lora=[])
    seen: set[str] = set()
    for path in shard_files(transformer_dir):
        with open_safetensors(path) as f:
            keys = [k for k in f.keys() if ".lora_A.default." in k or ".lora_B.default." in k]
            for k in keys:
                module, kind = k.split(".lora_")[0], k.split(".lora_")[1][0]
                pair = lora.get(module)
                if pair is None:
                    check.only_in_transformer.append(k)
                    continue
                seen.add(module)
                ref = pair.down if kind == "A" else pair.up
                t = f.get_tensor(k)
                check.compared += 1
                if t.shape != ref.shape or not torch.equal(t.to(torch.float32), ref.to(torch.float32)):
                    check.differing.append(k)
    if seen or check.only_in_transformer:
        check.only_in_lora = sorted(set(lora) - seen)
    return check


def convert_release(
    transformer: str | Path,
    out: str | Path,
    lora_path: str | Path | None = None,
    base: str | Path | None = None,
    report_path: str | Path | None = None,
    svd_rank: int | None = None,
    atol: float = 0.0,
    progress: bool = True,
) -> ConvertResult:
    """Release -> adapter file; optionally the diff report and the SVD LoRA of the difference."""
    out = Path(out)
    tdir, lora_file = _checked_inputs(Path(transformer), lora_path, base, svd_rank)
    info = scan_release_transformer(tdir)
    lora = parse_lora(load_tensors(lora_file), source=lora_file)
    _check_lora_shapes(lora, info.config, lora_file)
    stray = check_stray_lora(tdir, lora)
    if stray.status == "differs":
        logger.warning(
            "%s: the LoRA tensors saved inside the transformer (lora_*.default) differ from %s: %d differ, %d only in the "
            "transformer, %d only in the LoRA file. The adapter uses the LoRA file, as the authors' pipeline does.",
            tdir, lora_file.name, len(stray.differing or []), len(stray.only_in_transformer or []), len(stray.only_in_lora or []),
        )  # fmt: skip
    source = {
        "transformer": [file_fingerprint(p) for p in shard_files(tdir)],
        "transformer_config": "config.json",
        "lora": file_fingerprint(lora_file),
    }
    adapter = DSDAdapter(c_embedder=info.c_embedder, lora=lora)
    extra: dict[str, object] = {"source": source, "converted_by": "dsd convert", "stray_lora_check": stray.status}
    result = ConvertResult(adapter_path=out, adapter=adapter, stray=stray)
    if base is not None:
        hidden = int(info.config["num_attention_heads"] * info.config["attention_head_dim"])
        diff = diff_against_base(tdir, base, hidden, svd_rank=svd_rank, atol=atol, progress=progress)
        extra["base_identical"] = "yes" if diff.report.identical else "no"
        extra["base"] = file_fingerprint(base) if Path(base).is_file() else {"folder": Path(base).name}
        _write_base_diff(result, diff, Path(base), svd_rank, report_path)
    save_adapter(adapter, out, extra_metadata=extra)
    return result


def _checked_inputs(transformer: Path, lora_path, base, svd_rank: int | None) -> tuple[Path, Path]:
    """The transformer folder and LoRA file of a release, or a WeightsError that says what to give."""
    tdir, found_lora = _resolve_transformer(transformer)
    lora_file = Path(lora_path) if lora_path is not None else found_lora
    if lora_file is None:
        raise WeightsError(f"{transformer}: no --lora given and no {RELEASE_LORA_NAME} beside the transformer folder")
    if svd_rank is not None and svd_rank < 1:
        raise WeightsError(f"--svd-rank must be >= 1, got {svd_rank}")
    if svd_rank is not None and base is None:
        raise WeightsError("--svd-rank extracts the difference to a base FLUX: give --base too")
    read_transformer_config(tdir)
    return tdir, lora_file


def _write_base_diff(result: ConvertResult, diff, base: Path, svd_rank: int | None, report_path) -> None:
    """The delta LoRA file (with --svd-rank) and the JSON report (with --report)."""
    report = diff.report
    if svd_rank is not None and diff.delta_lora:
        delta_path = delta_lora_path(result.adapter_path)
        atomic_save_safetensors(
            lora_to_state_dict(diff.delta_lora),
            delta_path,
            metadata={
                "dsd_format": "dsd-base-delta-lora",
                "dsd_rank": str(svd_rank),
                "dsd_overall_rel_error": f"{report.svd['overall_rel_error']:.6g}" if report.svd else "",
                "dsd_base": base.name,
            },
        )
        result.delta_path = delta_path
        if report.svd is not None:
            report.svd["file"] = delta_path.name
    result.report = report
    if report_path is not None:
        result.report_path = Path(report_path)
        atomic_write_text(result.report_path, report_json(report) + "\n")


def _check_lora_shapes(lora: dict[str, LoraPair], cfg: dict, lora_file: Path) -> None:
    hidden = int(cfg["num_attention_heads"] * cfg["attention_head_dim"])
    for module, pair in lora.items():
        if module.startswith(("transformer_blocks.", "single_transformer_blocks.")) and module.endswith(("to_q", "to_k", "to_v")):
            if pair.down.shape[1] != hidden:
                raise WeightsError(
                    f"{lora_file}: LoRA for {module} takes {pair.down.shape[1]} inputs but the release's FLUX has hidden "
                    f"size {hidden}: the LoRA belongs to another model"
                )


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transformer", required=True, type=Path, help="the release's transformer folder (config.json + safetensors)")
    parser.add_argument("--lora", type=Path, help=f"the release's LoRA file (default: {RELEASE_LORA_NAME} beside the folder)")
    parser.add_argument("--out", required=True, type=Path, help="adapter file to write (.safetensors)")
    parser.add_argument("--base", type=Path, help="FLUX.1-dev: one safetensors (BFL/ComfyUI keys) or a diffusers transformer folder")
    parser.add_argument("--report", type=Path, help="write the diff report (JSON) here (with --base)")
    parser.add_argument("--svd-rank", type=int, help="extract the difference to --base as a LoRA of this rank")
    parser.add_argument("--atol", type=float, default=0.0, help="tensors whose max |diff| is <= this count as equal (default 0)")


def run_convert(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.report is not None and args.base is None:
        raise WeightsError("--report describes the difference to a base FLUX: give --base too")
    result = convert_release(
        args.transformer, args.out, lora_path=args.lora, base=args.base, report_path=args.report,
        svd_rank=args.svd_rank, atol=args.atol, progress=cli.progress_enabled(args),
    )  # fmt: skip
    ad = result.adapter
    size = result.adapter_path.stat().st_size
    emit(f"DSD adapter written: {result.adapter_path} ({size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f}s")
    emit(f"  embedder Linear({ad.in_channels}, {ad.hidden_size}); LoRA rank {ad.rank} on {len(ad.lora)} modules")
    stray = result.stray
    emit(f"  LoRA copy inside the transformer: {stray.status}" + (f" ({stray.compared} tensors compared)" if stray.compared else ""))
    if result.report is not None:
        for line in format_summary(result.report):
            emit(line)
        if result.report_path is not None:
            emit(f"  report: {result.report_path}")
        if result.delta_path is not None:
            emit(f"  base-delta LoRA: {result.delta_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m dsd convert`` is the entry point; this is the same command on its own."""
    parser = argparse.ArgumentParser(prog="python -m dsd convert", description=__doc__.splitlines()[0])
    cli.add_common_flags(parser)
    add_convert_arguments(parser)
    parser.set_defaults(func=run_convert)
    return cli.run_cli(parser, argv, user_errors=(WeightsError, FileNotFoundError))
