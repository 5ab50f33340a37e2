"""A small GGUF writer for test fixtures: a BFL-layout FLUX state dict -> a ``.gguf`` ComfyUI-GGUF loads.

It follows the file conventions city96/ComfyUI-GGUF reads (``loader.gguf_sd_loader``): architecture
``"flux"`` in ``general.architecture``, tensors under their BFL names (``double_blocks.0.img_attn.qkv.weight``),
shapes stored in GGML order (reversed) with no ``comfy.gguf.orig_shape`` fields (FLUX is never reshaped),
2-D weights above a size threshold quantised (Q8_0 by default, through ``gguf.quants.quantize``, pure numpy),
everything else kept as F32/F16/BF16. The gguf package (llama.cpp's ``gguf-py``) is imported lazily, so the
rest of ``dsd`` works without it.

Not a converter for real checkpoints (that is ComfyUI-GGUF's ``tools/convert.py`` + llama.cpp); it exists so
tests can build a quantised FLUX from tiny random weights in seconds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dsd.io import atomic_path

if TYPE_CHECKING:
    import numpy as np
    import torch

logger = logging.getLogger(__name__)

FLUX_ARCH = "flux"
# ComfyUI-GGUF keeps tensors of at most this many elements unquantised (tools/convert.py).
QUANTIZATION_THRESHOLD = 1024
MAX_TENSOR_NAME_LENGTH = 127  # GGML's limit on tensor names
MAX_TENSOR_DIMS = 4
# What ComfyUI-GGUF's model detection (and ComfyUI's own) look for in a BFL FLUX.
FLUX_MARKER_KEY = "double_blocks.0.img_attn.proj.weight"
DIFFUSERS_MARKER_KEY = "transformer_blocks.0.attn.norm_added_k.weight"
QUANT_TYPES = ("Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "BF16", "F16")
FLOAT_TYPES = ("F32", "F16", "BF16")


class GGUFFixtureError(ValueError):
    """The state dict cannot be written as a ComfyUI-GGUF FLUX file (or the gguf package is missing)."""


@dataclass(frozen=True, slots=True)
class GGUFWriteReport:
    path: Path
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGML type name -> number of tensors
    quantised: tuple[str, ...] = ()  # names of the tensors stored in the quantised type
    bytes_written: int = 0


def _gguf():
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise GGUFFixtureError(
            "writing a GGUF fixture needs the `gguf` package (llama.cpp's gguf-py): pip install 'gguf>=0.13'."
        ) from exc
    return gguf


def _type(gguf, name: str, allowed: tuple[str, ...], what: str):
    if name not in allowed:
        raise GGUFFixtureError(f"{what} must be one of {', '.join(allowed)}, got {name!r}.")
    return gguf.GGMLQuantizationType[name]


def check_flux_state(state: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`GGUFFixtureError` unless ``state`` is a BFL-layout FLUX transformer ComfyUI-GGUF accepts."""
    if DIFFUSERS_MARKER_KEY in state or any(k.startswith("transformer_blocks.") for k in state):
        raise GGUFFixtureError(
            "the state dict is in diffusers layout (transformer_blocks.*); ComfyUI-GGUF's FLUX files use BFL keys. "
            "Convert it first with dsd.weights.layout.diffusers_to_bfl."
        )
    prefixed = [k for k in state if k.startswith("model.diffusion_model.")]
    if prefixed:
        raise GGUFFixtureError(
            f"the state dict keys carry a checkpoint prefix ({prefixed[0]!r}); strip 'model.diffusion_model.' first."
        )
    if FLUX_MARKER_KEY not in state or "img_in.weight" not in state:
        raise GGUFFixtureError(
            f"not a BFL FLUX transformer state dict: {FLUX_MARKER_KEY!r} or 'img_in.weight' is missing "
            f"({len(state)} keys, e.g. {sorted(state)[:3]})."
        )
    long = [k for k in state if len(k) > MAX_TENSOR_NAME_LENGTH]
    if long:
        raise GGUFFixtureError(
            f"GGUF tensor names are limited to {MAX_TENSOR_NAME_LENGTH} characters: {long[0]!r}."
        )
    deep = [k for k, v in state.items() if v.ndim > MAX_TENSOR_DIMS]
    if deep:
        raise GGUFFixtureError(
            f"GGUF tensors have at most {MAX_TENSOR_DIMS} dimensions: {deep[0]!r} has {state[deep[0]].ndim}."
        )


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype not in (torch.float32, torch.float16, torch.float64):
        t = t.to(torch.float32)  # numpy has no bf16/fp8; quantise from fp32 like ComfyUI-GGUF's convert.py
    return t.contiguous().numpy()


def plan_tensor_type(name: str, shape: tuple[int, ...], quant, float_type, block_size: int, threshold: int):
    """The GGML type a tensor is stored as: ``quant`` for big 2-D weights whose rows fit its blocks, else ``float_type``."""
    n = 1
    for d in shape:
        n *= d
    if len(shape) == 2 and n > threshold and shape[-1] % block_size == 0:
        return quant
    if len(shape) == 2 and n > threshold:
        logger.debug(
            "%s: row length %d is not a multiple of %d; kept as %s",
            name,
            shape[-1],
            block_size,
            float_type.name,
        )
    return float_type


def write_flux_gguf(
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    quant: str = "Q8_0",
    float_type: str = "F32",
    threshold: int = QUANTIZATION_THRESHOLD,
    name: str | None = None,
) -> GGUFWriteReport:
    """Write a BFL FLUX state dict as a GGUF file ComfyUI-GGUF's ``UnetLoaderGGUF`` loads (atomically).

    2-D tensors with more than ``threshold`` elements (and rows divisible by the block size) become ``quant``;
    1-D and small tensors are stored as ``float_type`` (1-D BF16 is upcast by the loader anyway, F32 avoids it).
    """
    gguf = _gguf()
    check_flux_state(state)
    qtype = _type(gguf, quant, QUANT_TYPES, "quant")
    ftype = _type(gguf, float_type, FLOAT_TYPES, "float_type")
    block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
    dest = Path(path)

    writer = gguf.GGUFWriter(path=None, arch=FLUX_ARCH)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    file_type = getattr(gguf.LlamaFileType, f"MOSTLY_{quant}", None)
    if file_type is not None:
        writer.add_file_type(file_type)
    if name:
        writer.add_name(name)
    counts: dict[str, int] = {}
    quantised: list[str] = []
    for key in sorted(state):
        data = _to_numpy(state[key])
        ttype = plan_tensor_type(key, tuple(data.shape), qtype, ftype, block_size, threshold)
        try:
            packed = gguf.quants.quantize(data, ttype)
        except (NotImplementedError, gguf.QuantError) as exc:
            raise GGUFFixtureError(
                f"{key}: the gguf package cannot store {tuple(data.shape)} as {ttype.name} ({exc}); choose another quant."
            ) from exc
        writer.add_tensor(key, packed, raw_dtype=ttype)
        counts[ttype.name] = counts.get(ttype.name, 0) + 1
        if ttype == qtype:
            quantised.append(key)

    with atomic_path(dest, suffix=".gguf") as tmp:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
    report = GGUFWriteReport(dest, counts, tuple(quantised), dest.stat().st_size)
    logger.info(
        "GGUF %s: %s (%.1f MB)",
        dest.name,
        ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())),
        report.bytes_written / 1e6,
    )
    return report


def read_gguf_types(path: str | os.PathLike[str]) -> tuple[str | None, dict[str, str]]:
    """``(general.architecture, {tensor name: GGML type name})`` of a GGUF file (for tests and checks)."""
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path))
    arch_field = reader.get_field("general.architecture")
    arch = None
    if arch_field is not None:
        arch = bytes(arch_field.parts[arch_field.data[-1]]).decode("utf-8")
    return arch, {t.name: t.tensor_type.name for t in reader.tensors}
