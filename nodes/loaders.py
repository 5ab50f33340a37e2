"""DSD Adapter Loader: the DSD LoRA through ComfyUI's own LoRA machinery + the condition embedder patch."""

from __future__ import annotations

import logging
from pathlib import Path

import comfy.lora
import comfy.lora_convert
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..dsd.weights.adapter import load_adapter, trained_references
from ..dsd.weights.errors import WeightsError
from ..dsd.weights.lora import lora_to_state_dict
from ..dsd.weights.release import (
    RELEASE_LORA_NAME,
    find_release_parts,
    load_release_lora,
    scan_release_transformer,
)
from .errors import DSDAdapterError, public_path, public_text, require_finite
from .patch import apply_condition_embedder, flux_params

logger = logging.getLogger(__name__)

DSD_FOLDER = "dsd"


def register_model_folder() -> None:
    """``models/dsd`` (DSD adapters and the authors' release folders) as a ComfyUI model folder."""
    if DSD_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[DSD_FOLDER] = (
            [str(Path(folder_paths.models_dir) / DSD_FOLDER)],
            set(folder_paths.supported_pt_extensions),
        )


def adapter_choices() -> list[str]:
    """Files under models/dsd, then models/loras (names that appear in both come from dsd)."""
    names = list(folder_paths.get_filename_list(DSD_FOLDER))
    names += [n for n in folder_paths.get_filename_list("loras") if n not in names]
    return names


def resolve_adapter(name: str) -> Path:
    for folder in (DSD_FOLDER, "loras"):
        path = folder_paths.get_full_path(folder, name)
        if path is not None:
            return Path(path)
    return Path(folder_paths.get_full_path_or_raise(DSD_FOLDER, name))


def _release_root(path: Path) -> Path | None:
    """The release folder a file belongs to (its LoRA file or a transformer shard), else None."""
    if path.name == RELEASE_LORA_NAME and (path.parent / "transformer" / "config.json").is_file():
        return path.parent
    if (path.parent / "config.json").is_file() and (path.parent.parent / RELEASE_LORA_NAME).is_file():
        return path.parent.parent
    return None


def read_dsd_weights(path: Path) -> tuple[dict, dict, tuple[int, ...]]:
    """``(c_embedder tensors, LoRA pairs, trained reference counts)`` from a DSD adapter file or the authors'
    release (trained with one reference)."""
    root = _release_root(path)
    try:
        if root is not None:
            tdir, lora_path = find_release_parts(root)
            info = scan_release_transformer(tdir)  # streams: reads the embedder only
            if lora_path is None:
                raise DSDAdapterError(
                    f"{public_path(root)}: the DSD release has no {RELEASE_LORA_NAME}; download it beside transformer/."
                )
            return info.c_embedder, load_release_lora(lora_path), (1,)
        adapter = load_adapter(path)
        return adapter.c_embedder, adapter.lora, tuple(trained_references(adapter))
    except WeightsError as exc:
        raise DSDAdapterError(
            f"DSD Adapter Loader: {public_text(str(exc))} Choose a DSD adapter (.safetensors from `python -m dsd convert`) or the authors' "
            f"release (primecai/dsd_model: put the folder under models/{DSD_FOLDER}/ and pick its {RELEASE_LORA_NAME})."
        ) from exc


def apply_lora(model, pairs: dict, strength: float, source: str):
    """The LoRA via comfy.lora (same path as LoraLoader); every module must map, or this raises."""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    unmapped = sorted(m for m in pairs if f"transformer.{m}" not in key_map)
    if unmapped:
        raise DSDAdapterError(
            f"{source}: {len(unmapped)} of {len(pairs)} LoRA modules have no place in this FLUX (e.g. {unmapped[0]!r}); "
            "the DSD weights were made for a different FLUX (FLUX.1-dev has 19 double and 38 single blocks)."
        )
    lora_sd = comfy.lora_convert.convert_lora(lora_to_state_dict(pairs))
    loaded = comfy.lora.load_lora(lora_sd, key_map, log_missing=False)
    m = model.clone()
    added = m.add_patches(loaded, strength)
    if len(loaded) != len(pairs) or len(set(added)) != len(loaded):
        raise DSDAdapterError(
            f"{source}: only {len(set(added))} of {len(pairs)} LoRA modules could be applied to this model; "
            "the DSD weights do not fit it."
        )
    return m, len(loaded)


class DSDAdapterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DSDAdapterLoader",
            display_name="DSD Adapter Loader",
            category="DSD/loaders",
            description="Turns a FLUX.1-dev MODEL into DSD: applies the DSD LoRA with ComfyUI's LoRA machinery and adds "
            "the condition embedder as a patch (base weights untouched; works with bf16, fp8 and GGUF models).",
            inputs=[
                io.Model.Input("model", tooltip="A FLUX.1-dev model (bf16, fp8 or GGUF)."),
                io.Combo.Input(
                    "adapter",
                    options=adapter_choices(),
                    tooltip="A DSD adapter file (models/dsd or models/loras) or the authors' release: its "
                    "pytorch_lora_weights.safetensors inside the release folder under models/dsd/.",
                ),
                io.Float.Input(
                    "strength", default=1.0, min=-4.0, max=4.0, step=0.01,
                    tooltip="Strength of the DSD LoRA (1.0 = as trained). The condition embedder is always applied in full.",
                ),  # fmt: skip
            ],
            outputs=[io.Model.Output(tooltip="The FLUX model with DSD applied.")],
        )

    @classmethod
    def execute(cls, model, adapter, strength) -> io.NodeOutput:
        require_finite("DSD Adapter Loader", strength=strength)
        flux_params(model)
        progress = comfy.utils.ProgressBar(3)
        path = resolve_adapter(adapter)
        c_emb, pairs, trained = read_dsd_weights(path)
        progress.update(1)
        patched = apply_condition_embedder(model, c_emb["c_embedder.weight"], c_emb.get("c_embedder.bias"), trained)
        progress.update(1)
        patched, count = apply_lora(patched, pairs, strength, public_path(path))
        progress.update(1)
        logger.info("DSD: %s -> embedder + %d LoRA modules (strength %.2f), trained for k = %s reference(s)",
                    path.name, count, strength, list(trained))  # fmt: skip
        return io.NodeOutput(patched)
