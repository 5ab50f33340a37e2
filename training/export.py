"""Export trained weights: the DSD adapter file the nodes load, and the authors' diffusers/PEFT layout.

* Adapter (``dsd.weights.adapter.save_adapter``): ``c_embedder.weight/bias`` + the LoRA as
  ``transformer.<diffusers path>.lora_A.weight`` / ``lora_B.weight`` / ``.alpha``, the keys
  ComfyUI's LoRA loader maps onto FLUX. Metadata: rank, alpha, step, the config (no secrets),
  the dataset hash, the reference counts k trained with (``dsd_train_references``).
* Release layout (like ``primecai/dsd_model``): ``transformer/`` (config.json, the base FLUX
  shards copied as they are plus one extra shard with ``c_embedder``, and an index listing all)
  and ``pytorch_lora_weights.safetensors`` beside it; ``dsd.weights.release`` and the nodes load it.

Works from a live model or straight from a checkpoint (no base model needed for the adapter).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from dsd.io import atomic_directory, atomic_save_safetensors
from dsd.weights.adapter import DSDAdapter, references_metadata, save_adapter
from dsd.weights.lora import LoraPair, lora_to_state_dict
from dsd.weights.release import RELEASE_LORA_NAME, read_transformer_config
from dsd.weights.safetensors_io import open_safetensors, shard_files

from .config import TrainConfig, public_dict

logger = logging.getLogger(__name__)

_PEFT_KEY = re.compile(r"^transformer\.(?P<module>.+)\.(?P<kind>lora_A|lora_B)\.default\.weight$")
C_EMBEDDER_SHARD = "diffusion_pytorch_model-dsd-c_embedder.safetensors"


class ExportError(ValueError):
    """Nothing exportable (no checkpoint, wrong folder)."""


def adapter_from_trainable(state: dict[str, torch.Tensor], alpha: float) -> DSDAdapter:
    """Checkpoint tensors (``transformer.<path>.lora_A.default.weight``, ``c_embedder.*``) -> DSDAdapter."""
    downs: dict[str, torch.Tensor] = {}
    ups: dict[str, torch.Tensor] = {}
    c_emb: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.startswith("c_embedder."):
            c_emb[k] = v.float()
            continue
        m = _PEFT_KEY.match(k)
        if m:
            (downs if m.group("kind") == "lora_A" else ups)[m.group("module")] = v.float()
    if "c_embedder.weight" not in c_emb:
        raise ExportError("the checkpoint has no c_embedder weights (trained with network.train_c_embedder=false?)")
    pairs = {name: LoraPair(down=downs[name], up=ups[name], alpha=float(alpha)) for name in sorted(downs)}
    return DSDAdapter(c_embedder=c_emb, lora=pairs)


def export_metadata(cfg: TrainConfig, step: int, dataset_hash: str, references: list[int] | None = None) -> dict[str, Any]:
    """``references``: the k the run trained with (its data's); None: the k of ``training.references``."""
    return {
        **references_metadata(references or list(cfg.training.reference_mix)),
        "dsd_source": "comfyui-dsd training",
        "dsd_alpha": str(cfg.network.alpha),
        "dsd_train_steps": str(step),
        "dsd_train_config": json.dumps(public_dict(cfg), sort_keys=True),
        "dsd_dataset_hash": dataset_hash,
        "dsd_target_modules": json.dumps(cfg.network.target_modules),
    }


def write_adapter(adapter: DSDAdapter, path: str | Path, cfg: TrainConfig, step: int, dataset_hash: str,
                  references: list[int] | None = None) -> Path:  # fmt: skip
    return save_adapter(adapter, path, extra_metadata=export_metadata(cfg, step, dataset_hash, references))


def _base_transformer_folder(cfg: TrainConfig) -> Path:
    if cfg.model.transformer:
        return Path(cfg.model.transformer)
    if cfg.model.release:
        from dsd.weights.release import find_release_parts

        return find_release_parts(cfg.model.release)[0]
    root = Path(cfg.model.flux)
    return root / "transformer" if (root / "transformer").is_dir() else root


def write_release_layout(adapter: DSDAdapter, out_dir: str | Path, cfg: TrainConfig, step: int, dataset_hash: str,
                         include_base: bool = True) -> Path:  # fmt: skip
    """The authors' layout: ``transformer/`` (+ c_embedder) and ``pytorch_lora_weights.safetensors``.

    With ``include_base`` the base shards are copied (the folder then loads on its own, like the
    release); without it ``transformer/`` holds only config.json and the c_embedder shard.
    A release used as the base keeps its own ``c_embedder`` out: the trained one replaces it.
    """
    base = _base_transformer_folder(cfg)
    config = read_transformer_config(base)
    meta = {k: str(v) for k, v in export_metadata(cfg, step, dataset_hash).items()}
    out = Path(out_dir)
    with atomic_directory(out) as tmp:
        tdir = tmp / "transformer"
        tdir.mkdir()
        (tdir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        weight_map: dict[str, str] = {}
        if include_base:
            for i, shard in enumerate(shard_files(base)):
                name = f"diffusion_pytorch_model-base-{i:05d}.safetensors"
                with open_safetensors(shard) as f:
                    keys = list(f.keys())
                if any(k.startswith("c_embedder.") or ".lora_" in k for k in keys):
                    # A release shard: rewrite without its embedder and stray PEFT tensors.
                    from dsd.weights.safetensors_io import load_tensors

                    tensors = {k: v for k, v in load_tensors(shard).items() if not k.startswith("c_embedder.") and ".lora_" not in k}
                    atomic_save_safetensors(tensors, tdir / name)
                    keys = list(tensors)
                else:
                    shutil.copyfile(shard, tdir / name)
                weight_map.update({k: name for k in keys})
        atomic_save_safetensors(adapter.c_embedder, tdir / C_EMBEDDER_SHARD, metadata=meta)
        weight_map.update({k: C_EMBEDDER_SHARD for k in adapter.c_embedder})
        (tdir / "diffusion_pytorch_model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"dsd_train_steps": str(step)}, "weight_map": dict(sorted(weight_map.items()))}, indent=2)
        )
        atomic_save_safetensors(lora_to_state_dict(adapter.lora), tmp / RELEASE_LORA_NAME, metadata=meta)
    return out


def export_checkpoint(cfg: TrainConfig, checkpoint: str | Path, adapter_path: str | Path,
                      release_dir: str | Path | None = None, include_base: bool = True, use_ema: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """CLI ``export``: checkpoint -> adapter file (+ release layout). Returns a summary dict. ``use_ema``: None takes
    the EMA weights when the checkpoint has them (as training's own adapter and best.safetensors do), True requires
    them, False takes the live weights."""
    from safetensors.torch import load_file

    ckpt = Path(checkpoint)
    state_file = ckpt / "state.json"
    if not state_file.is_file():
        raise ExportError(f"{ckpt}: not a training checkpoint (no state.json); run `python -m training train` first")
    state = json.loads(state_file.read_text())
    if use_ema is None:
        use_ema = (ckpt / "ema.safetensors").is_file()
    weights = ckpt / ("ema.safetensors" if use_ema else "trainable.safetensors")
    if not weights.is_file():
        raise ExportError(f"{weights}: missing (EMA exists only with training.ema_decay > 0)")
    adapter = adapter_from_trainable(load_file(str(weights)), cfg.network.alpha)
    step = int(state["step"])
    dhash = str(state.get("meta", {}).get("dataset_hash", ""))
    out = {"adapter": str(write_adapter(adapter, adapter_path, cfg, step, dhash)), "step": step,
           "weights": "EMA" if use_ema else "live", "rank": adapter.rank, "lora_modules": len(adapter.lora)}  # fmt: skip
    if release_dir is not None:
        out["release"] = str(write_release_layout(adapter, release_dir, cfg, step, dhash, include_base=include_base))
    return out
