"""Embedding similarities of the DSD paper's Table 1: CLIP-I, CLIP-T and DINO, from local model folders.

CLIP-I is the cosine between the CLIP image embeddings of the reference and an output, CLIP-T the
cosine between an output's CLIP image embedding and its prompt's CLIP text embedding, DINO the
cosine between DINOv2 embeddings (the CLS token after the final layer norm) of reference and output,
DINOv1 (``dino_v1``, DreamBench++'s default DINO column: a transformers ``ViTModel`` folder such as
``facebook/dino-vits8``) the same with DreamBench++'s own preprocessing (Resize(256, bicubic) on the
short side, CenterCrop(224), ImageNet normalisation; what torchvision does to a PIL image, in PIL).
The user points at folders holding transformers checkpoints (``save_pretrained`` layout); nothing is
downloaded (``local_files_only``). Images go through the model's own processor in batches, so memory
stays flat in the number of images.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

CLIP_TYPES = frozenset({"clip"})
DINO_TYPES = frozenset({"dinov2", "dinov2_with_registers"})
DINO_V1_TYPES = frozenset({"vit"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EmbeddingModelError(ValueError):
    """A model folder is missing, incomplete or holds the wrong kind of model; the message says which."""


def _model_type(folder: Path, role: str, accepted: frozenset[str]) -> str:
    if not folder.is_dir():
        raise EmbeddingModelError(
            f"{role} model folder {folder} does not exist; point it at a local folder written by transformers' "
            f"save_pretrained (config.json, model weights, preprocessor_config.json)"
        )
    config = folder / "config.json"
    if not config.is_file():
        raise EmbeddingModelError(
            f"{folder} has no config.json, so it is not a transformers model folder; for {role} use a folder "
            f"holding a model of type {' or '.join(sorted(accepted))} (e.g. the downloaded Hugging Face repository)"
        )
    try:
        kind = json.loads(config.read_text(encoding="utf-8")).get("model_type", "")
    except (OSError, json.JSONDecodeError) as exc:
        raise EmbeddingModelError(f"{config} cannot be read as JSON ({exc})") from exc
    if kind not in accepted:
        raise EmbeddingModelError(
            f"{folder} holds a {kind or 'untyped'!s} model, but {role} needs model_type "
            f"{' or '.join(sorted(accepted))}; check which folder was given for {role}"
        )
    return kind


def dino_v1_pixels(images: Sequence[Image.Image], resize: int = 256, crop: int = 224) -> torch.Tensor:
    """DreamBench++'s DINOv1 transform: torchvision Resize(resize, BICUBIC) + CenterCrop(crop) + ToTensor +
    Normalize(ImageNet) on PIL images, written with PIL (torchvision resizes a PIL image with PIL's resize)."""
    import numpy as np
    from PIL import Image

    out = []
    for im in images:
        w, h = im.size
        short, long = (w, h) if w <= h else (h, w)
        size = (resize, int(resize * long / short)) if w <= h else (int(resize * long / short), resize)
        im = im.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        top, left = int(round((im.height - crop) / 2.0)), int(round((im.width - crop) / 2.0))
        arr = np.asarray(im.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255.0
        out.append(torch.from_numpy((arr - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)))
    return torch.stack(out).permute(0, 3, 1, 2).contiguous()


def _peek_type(folder: Path) -> str:
    try:
        return str(json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type", ""))
    except (OSError, json.JSONDecodeError, AttributeError):
        return ""


def _load(loader: Any, folder: Path, role: str, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(folder, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise EmbeddingModelError(f"cannot load the {role} model from {folder}: {exc}") from exc


def _features(output: Any) -> torch.Tensor:
    # transformers 5 returns a ModelOutput whose pooler_output holds the projection; older versions a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class _Clip:
    model: Any
    image_processor: Any
    tokenizer: Any


@dataclass
class _Dino:
    model: Any
    image_processor: Any


class EmbeddingModels:
    """CLIP and/or DINOv2 loaded from local folders; embeddings are L2-normalised float32 on the CPU."""

    def __init__(self, clip: _Clip | None, dino: _Dino | None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, batch_size: int = 16, dino_v1: Any = None) -> None:  # fmt: skip
        if clip is None and dino is None and dino_v1 is None:
            raise EmbeddingModelError("no embedding model given: pass a CLIP, a DINOv2 or a DINOv1 folder")
        self.dino_v1 = dino_v1
        if batch_size < 1:
            raise EmbeddingModelError(f"batch_size must be at least 1, got {batch_size}")
        self.clip = clip
        self.dino = dino
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size

    @classmethod
    def load(cls, clip: str | Path | None = None, dino: str | Path | None = None, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, batch_size: int = 16, dino_v1: str | Path | None = None) -> EmbeddingModels:  # fmt: skip
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, CLIPModel, ViTModel

        clip_parts = dino_parts = None
        if clip is not None:
            folder = Path(clip)
            _model_type(folder, "CLIP", CLIP_TYPES)
            model = _load(CLIPModel, folder, "CLIP", dtype=dtype).to(device).eval()
            clip_parts = _Clip(model, _load(AutoImageProcessor, folder, "CLIP image processor"),
                               _load(AutoTokenizer, folder, "CLIP tokenizer"))  # fmt: skip
            logger.info("CLIP from %s (%d parameters)", folder, sum(p.numel() for p in model.parameters()))
        v1 = None
        if dino_v1 is not None:
            folder = Path(dino_v1)
            _model_type(folder, "DINOv1", DINO_V1_TYPES)
            v1 = _load(ViTModel, folder, "DINOv1", dtype=dtype, add_pooling_layer=False).to(device).eval()
            logger.info("DINOv1 from %s (%d parameters)", folder, sum(p.numel() for p in v1.parameters()))
        if dino is not None:
            folder = Path(dino)
            if _peek_type(folder) in DINO_V1_TYPES:
                raise EmbeddingModelError(f"{folder} holds a ViT (DINOv1) model; give it as --dino-v1 (--dino is DINOv2)")
            _model_type(folder, "DINO", DINO_TYPES)
            model = _load(AutoModel, folder, "DINO", dtype=dtype).to(device).eval()
            dino_parts = _Dino(model, _load(AutoImageProcessor, folder, "DINO image processor"))
            logger.info("DINO from %s (%d parameters)", folder, sum(p.numel() for p in model.parameters()))
        return cls(clip_parts, dino_parts, device=device, dtype=dtype, batch_size=batch_size, dino_v1=v1)

    @property
    def kinds(self) -> tuple[str, ...]:
        parts = (("clip", self.clip), ("dino", self.dino), ("dino_v1", self.dino_v1))
        return tuple(k for k, part in parts if part is not None)

    def _pixels(self, processor: Any, images: list[Image.Image]) -> torch.Tensor:
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.dtype)

    @torch.inference_mode()
    def _embed_batch(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.clip is not None:
            pixels = self._pixels(self.clip.image_processor, images)
            out["clip"] = _normalise(_features(self.clip.model.get_image_features(pixel_values=pixels))).cpu()
        if self.dino is not None:
            pixels = self._pixels(self.dino.image_processor, images)
            out["dino"] = _normalise(self.dino.model(pixel_values=pixels).pooler_output).cpu()
        if self.dino_v1 is not None:
            pixels = dino_v1_pixels(images).to(self.device, self.dtype)
            out["dino_v1"] = _normalise(self.dino_v1(pixel_values=pixels).last_hidden_state[:, 0]).cpu()  # CLS
        return out

    def iter_image_embeddings(self, images: Iterable[Image.Image]) -> Iterator[dict[str, torch.Tensor]]:
        """Embeddings batch by batch for any iterable (a generator reading files keeps memory flat)."""
        for batch in _batches(images, self.batch_size):
            yield self._embed_batch(batch)

    def image_embeddings(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """``{"clip": [N, D], "dino": [N, D']}`` (only the loaded models), L2-normalised."""
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in self.kinds}
        for batch in self.iter_image_embeddings(images):
            for key, value in batch.items():
                parts[key].append(value)
        return {k: torch.cat(v) if v else torch.empty(0, 0) for k, v in parts.items()}

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP text embeddings ``[N, D]``, L2-normalised; long prompts are cut at CLIP's context length."""
        if self.clip is None:
            raise EmbeddingModelError("text embeddings need a CLIP model; none was loaded")
        chunks = []
        for batch in _batches(texts, self.batch_size):
            tokens = self.clip.tokenizer(list(batch), padding=True, truncation=True, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            chunks.append(_normalise(_features(self.clip.model.get_text_features(**tokens))).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, 0)

    def score(self, reference: Image.Image, outputs: Sequence[Image.Image],
              prompts: Sequence[str] = ()) -> list[dict[str, float]]:  # fmt: skip
        """Per output ``{"clip_i", "clip_t", "dino"}`` (keys only for loaded models; clip_t only with prompts).

        ``prompts`` is empty, one prompt for every output, or one per output.
        """
        if prompts and len(prompts) not in (1, len(outputs)):
            raise ValueError(
                f"{len(prompts)} prompts for {len(outputs)} outputs: give one prompt or one per output"
            )
        if not outputs:
            return []
        ref = self.image_embeddings([reference])
        out = self.image_embeddings(outputs)
        scores: list[dict[str, float]] = [{} for _ in outputs]
        if self.clip is not None:
            _fill(scores, "clip_i", out["clip"] @ ref["clip"][0])
            if prompts:
                text = self.text_embeddings(list(prompts))
                _fill(scores, "clip_t", (out["clip"] * text).sum(-1))
        for key in ("dino", "dino_v1"):
            if key in out:
                _fill(scores, key, out[key] @ ref[key][0])
        return scores


def _fill(scores: list[dict[str, float]], key: str, values: torch.Tensor) -> None:
    for row, value in zip(scores, values.tolist(), strict=True):
        row[key] = float(value)


def cosine_scores(reference: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each row of ``candidates`` [N, D] with ``reference`` [D] or [1, D]."""
    ref = _normalise(reference.reshape(1, -1))
    return (_normalise(candidates.reshape(candidates.shape[0], -1)) @ ref[0]).float()
