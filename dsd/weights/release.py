"""The authors' release as published (Hugging Face ``primecai/dsd_model``).

``transformer/`` holds a diffusers FLUX.1 transformer config (class ``FluxTransformer2DModel``, or the
authors' subclass name ``FluxTransformer2DConditionalModel``) and a single or sharded
safetensors that also carries ``c_embedder.weight/bias`` and stray PEFT keys
(``...lora_A.default.weight``), and ``pytorch_lora_weights.safetensors`` holds the LoRA with
``transformer.``-prefixed diffusers keys.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..tokens import FLUX_PACKED_CHANNELS
from .errors import WeightsError
from .lora import LoraPair, parse_lora
from .safetensors_io import check_finite, iter_folder_tensors, load_tensors, open_safetensors, shard_files

logger = logging.getLogger(__name__)

RELEASE_LORA_NAME = "pytorch_lora_weights.safetensors"
FLUX_TRANSFORMER_CLASS = "FluxTransformer2DModel"
# What a diffusers FLUX.1 transformer config holds and SD3/UNet/other configs lack (or size differently).
FLUX_CONFIG_KEYS = ("in_channels", "num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads",
                    "joint_attention_dim", "pooled_projection_dim")  # fmt: skip
_PEFT_STRAY = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(\.|$)")


@dataclass
class ReleaseTransformer:
    folder: Path
    config: dict
    c_embedder: dict[str, torch.Tensor]
    stray_peft_keys: list[str] = field(default_factory=list)
    base_keys: list[str] = field(default_factory=list)


def find_release_parts(path: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """Accept the release root (``transformer/`` + LoRA file) or the transformer folder itself."""
    path = Path(path)
    if (path / "transformer" / "config.json").is_file():
        lora = path / RELEASE_LORA_NAME
        return path / "transformer", lora if lora.is_file() else None
    if (path / "config.json").is_file():
        lora = path.parent / RELEASE_LORA_NAME
        return path, lora if lora.is_file() else None
    raise WeightsError(
        f"{path}: not the DSD release. Expected a folder with transformer/config.json (and {RELEASE_LORA_NAME}) "
        "or the transformer folder itself."
    )


def read_transformer_config(folder: str | os.PathLike[str]) -> dict:
    """``<folder>/config.json``, checked by :func:`check_flux_config` (every reader of a release goes through here)."""
    cfg_path = Path(folder) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError as exc:
        raise WeightsError(f"{cfg_path}: missing; the transformer folder needs its config.json") from exc
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{cfg_path}: not valid JSON ({exc})") from exc
    return check_flux_config(cfg, cfg_path)


def check_flux_config(cfg: object, source: str | os.PathLike[str]) -> dict:
    """Accept any config with FLUX.1's keys and shapes, whatever its ``_class_name``.

    The class name is not a test: the authors load their release as ``FluxTransformer2DConditionalModel``
    (their subclass), so a copy saved from their code carries that name. Only what is clearly another
    architecture is refused (SD3's MMDiT, a UNet, FLUX Fill/Depth with widened inputs, FLUX.2).
    """
    if not isinstance(cfg, dict):
        raise WeightsError(f"{source}: expected a JSON object (a diffusers model config), found {type(cfg).__name__}")
    cls = cfg.get("_class_name") or "model without _class_name"
    problems = [f"no {key!r}" for key in FLUX_CONFIG_KEYS if key not in cfg]
    for key, expected in (("in_channels", FLUX_PACKED_CHANNELS), ("patch_size", 1)):
        if key in cfg and cfg[key] != expected:
            problems.append(f"{key}={cfg[key]!r} (FLUX.1: {expected})")
    if cfg.get("out_channels") not in (None, FLUX_PACKED_CHANNELS):
        problems.append(f"out_channels={cfg['out_channels']!r} (FLUX.1: {FLUX_PACKED_CHANNELS} or null)")
    for key in ("num_attention_heads", "attention_head_dim", "num_layers"):
        if key in cfg and not (isinstance(cfg[key], int) and cfg[key] > 0):
            problems.append(f"{key}={cfg[key]!r} (a positive integer)")
    if problems:
        raise WeightsError(
            f"{source}: the model is a {cls}, not a FLUX.1 transformer ({'; '.join(problems)}). DSD needs the "
            f"transformer folder of the DSD release (primecai/dsd_model: FLUX.1 keys, in_channels {FLUX_PACKED_CHANNELS})."
        )
    if cls != FLUX_TRANSFORMER_CLASS:
        logger.info("%s: class %s has FLUX.1's keys and shapes; read as %s", source, cls, FLUX_TRANSFORMER_CLASS)
    return cfg


def is_stray_peft_key(key: str) -> bool:
    return bool(_PEFT_STRAY.search(key))


def base_key(key: str) -> str:
    """PEFT-wrapped base weights (``to_q.base_layer.weight``) -> plain key."""
    return key.replace(".base_layer.", ".")


def scan_release_transformer(folder: str | os.PathLike[str]) -> ReleaseTransformer:
    """Read config, embedder and key inventory, streaming (never the whole transformer in RAM)."""
    folder = Path(folder)
    cfg = read_transformer_config(folder)
    c_emb: dict[str, torch.Tensor] = {}
    stray: list[str] = []
    base: list[str] = []
    for path in shard_files(folder):
        with open_safetensors(path) as f:
            for k in f.keys():
                if k.startswith("c_embedder."):
                    c_emb[k] = f.get_tensor(k)
                elif is_stray_peft_key(k):
                    stray.append(k)
                else:
                    base.append(base_key(k))
    if "c_embedder.weight" not in c_emb:
        raise WeightsError(
            f"{folder}: the transformer has no c_embedder weights, so it is not the DSD release "
            "(plain FLUX?). Point --transformer to the DSD release's transformer folder."
        )
    if not any(k.startswith("transformer_blocks.") for k in base):
        raise WeightsError(f"{folder}: no transformer_blocks.* tensors: this is not a diffusers FLUX transformer")
    check_finite(c_emb, folder)
    hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    if tuple(c_emb["c_embedder.weight"].shape) != (hidden, cfg["in_channels"]):
        raise WeightsError(
            f"{folder}: c_embedder.weight is {tuple(c_emb['c_embedder.weight'].shape)}, expected ({hidden}, {cfg['in_channels']})"
        )
    return ReleaseTransformer(folder=folder, config=cfg, c_embedder=c_emb, stray_peft_keys=stray, base_keys=base)


def iter_release_base_tensors(folder: str | os.PathLike[str]):
    """Stream ``(diffusers key, tensor)`` of the release's base FLUX weights (no embedder, no PEFT keys)."""
    for k, t, _ in iter_folder_tensors(folder):
        if k.startswith("c_embedder.") or is_stray_peft_key(k):
            continue
        yield base_key(k), t


def load_release_lora(path: str | os.PathLike[str]) -> dict[str, LoraPair]:
    return parse_lora(load_tensors(path), source=path)


def load_release_transformer(folder: str | os.PathLike[str], dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Build the DSD transformer (diffusers FLUX + embedder) from the release's transformer folder."""
    from diffusers import FluxTransformer2DModel

    from ..model import DSDTransformer

    info = scan_release_transformer(folder)
    cfg = {k: v for k, v in info.config.items() if not k.startswith("_")}
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(cfg)
    state = dict(iter_release_base_tensors(folder))
    missing = set(transformer.state_dict()) - set(state)
    if missing:
        raise WeightsError(f"{folder}: transformer weights miss {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
    transformer.load_state_dict({k: v.to(dtype) for k, v in state.items() if k in transformer.state_dict()}, assign=True)
    transformer.to(device)
    model = DSDTransformer(transformer)
    model.c_embedder.to(dtype=dtype, device=device)
    model.load_c_embedder(info.c_embedder)
    return model
