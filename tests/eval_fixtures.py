"""Tiny random embedding models written offline, loadable by the real loading code (test-only).

- ``write_tiny_clip(folder)``: a transformers CLIPModel (32 px, 8 px patches) + image processor + a
  character-level CLIP tokenizer, in ``save_pretrained`` layout (``EmbeddingModels.load(clip=folder)``).
- ``write_tiny_dino(folder)``: a transformers Dinov2Model + its image processor.
- ``write_tiny_dino_v1(folder)``: a transformers ViTModel in facebook/dino-vits8's layout (DINOv1).
- ``write_tiny_clip_vision_comfy(path)``: a CLIP vision safetensors file that ComfyUI's stock
  ``CLIPVisionLoader`` accepts. ComfyUI picks the architecture from fixed key/shape checks
  (``comfy/clip_vision.py``: layer 22 present -> ViT-L/14), so the file is FULL WIDTH (ViT-L, 303 M
  parameters, fp16, about 600 MB); it is filled from a seeded generator without building a model.
Same seed, same weights.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
VITL_CONFIG = {  # ComfyUI's comfy/clip_vision_config_vitl.json in transformers terms
    "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
    "image_size": 224, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
}  # fmt: skip


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + ".,!?'-:;()/&"
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in chars:
            vocab[c + suffix] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def write_tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """A tiny random CLIP (projection 16) with processor and tokenizer, saved for local loading."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = Path(folder)
    tokenizer = _clip_tokenizer()
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": len(tokenizer) - 2,
                     "eos_token_id": len(tokenizer) - 1, "pad_token_id": len(tokenizer) - 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                       image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(folder)  # fmt: skip
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_dino(folder: str | Path, seed: int = 0) -> Path:
    """A tiny random DINOv2 (hidden 32, 8 px patches) with its image processor, saved for local loading."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = Path(folder)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32,
                          patch_size=8)  # fmt: skip
    torch.manual_seed(seed)
    Dinov2Model(config).eval().save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_convert_rgb=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)  # fmt: skip
    return folder


def write_tiny_dino_v1(folder: str | Path, seed: int = 0) -> Path:
    """A tiny random DINOv1 in facebook/dino-vits8's layout (transformers ViTModel without pooler, 224 px input,
    32 px patches here instead of 8 to stay small) with a ViTImageProcessor, saved for local loading."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = Path(folder)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=224,
                       patch_size=32)  # fmt: skip
    torch.manual_seed(seed)
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)  # fmt: skip
    return folder


def _vitl_shapes() -> dict[str, tuple[int, ...]]:
    """transformers' CLIPVisionModelWithProjection keys for ViT-L/14 (written out: building it costs seconds)."""
    d, ff, n = VITL_CONFIG["hidden_size"], VITL_CONFIG["intermediate_size"], VITL_CONFIG["num_hidden_layers"]
    patch, tokens = VITL_CONFIG["patch_size"], (VITL_CONFIG["image_size"] // VITL_CONFIG["patch_size"]) ** 2 + 1
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (d,),
        "vision_model.embeddings.patch_embedding.weight": (d, 3, patch, patch),
        "vision_model.embeddings.position_embedding.weight": (tokens, d),
    }
    for norm in ("vision_model.pre_layrnorm", "vision_model.post_layernorm"):
        shapes |= {f"{norm}.weight": (d,), f"{norm}.bias": (d,)}
    for i in range(n):
        layer = f"vision_model.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes |= {f"{layer}.self_attn.{proj}.weight": (d, d), f"{layer}.self_attn.{proj}.bias": (d,)}
        for norm in ("layer_norm1", "layer_norm2"):
            shapes |= {f"{layer}.{norm}.weight": (d,), f"{layer}.{norm}.bias": (d,)}
        shapes |= {f"{layer}.mlp.fc1.weight": (ff, d), f"{layer}.mlp.fc1.bias": (ff,)}
        shapes |= {f"{layer}.mlp.fc2.weight": (d, ff), f"{layer}.mlp.fc2.bias": (d,)}
    shapes["visual_projection.weight"] = (VITL_CONFIG["projection_dim"], d)
    return shapes


def write_tiny_clip_vision_comfy(path: str | Path, seed: int = 0) -> Path:
    """A random ViT-L/14 CLIP vision file in transformers keys (what ComfyUI's CLIPVisionLoader detects).

    Drawing 303 M normals takes seconds, so every matrix is a window into one seeded 8 M-value pool; the
    patch embedding is drawn larger so that image content, not the class/position embeddings, dominates.
    """
    from safetensors.torch import save_file

    path = Path(path)
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randn(1 << 23, generator=gen).to(torch.float16)
    offsets = torch.randint(0, 1 << 20, (1024,), generator=gen).tolist()
    state = {}
    for i, (key, shape) in enumerate(_vitl_shapes().items()):
        if "norm" in key and key.endswith(".weight"):
            state[key] = torch.ones(shape, dtype=torch.float16)
        elif key.endswith(".bias"):
            state[key] = torch.zeros(shape, dtype=torch.float16)
        else:
            n = int(np.prod(shape))
            std = 0.2 if "patch_embedding" in key else 0.02
            start = offsets[i % len(offsets)] % (pool.numel() - n + 1)
            state[key] = (pool[start : start + n] * std).reshape(shape).clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))  # a test's temporary file: no fsync of 580 MB (dsd.io's atomic write) needed
    return path


def smooth_image(seed: int, size: int = 64) -> Image.Image:
    """Deterministic per-seed image with structure at the scale of the tiny models' patches."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = rng.uniform(0, 1, 3) + xx[..., None] * rng.uniform(-1, 1, 3) + yy[..., None] * rng.uniform(-1, 1, 3)
    for _ in range(3):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        img += 0.8 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.01)[..., None] * rng.uniform(-1, 1, 3)
    return Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "RGB")


def degrade(image: Image.Image, amount: float, seed: int = 0) -> Image.Image:
    """``image`` blended toward fixed noise by ``amount`` in [0, 1] (0: unchanged)."""
    rng = np.random.default_rng(seed)
    arr = np.asarray(image, dtype=np.float32) / 255
    noise = rng.uniform(0, 1, arr.shape).astype(np.float32)
    out = (1 - amount) * arr + amount * noise
    return Image.fromarray((np.clip(out, 0, 1) * 255).astype(np.uint8), "RGB")


CLIP_VISION_NAME = "dsd_test_vitl.safetensors"


def shared_clip_vision_dir(base: str | Path) -> Path:
    """``<base>/clip_vision/`` holding CLIP_VISION_NAME, written once per test session (580 MB, seconds)."""
    folder = Path(base) / "clip_vision"
    if not (folder / CLIP_VISION_NAME).is_file():
        write_tiny_clip_vision_comfy(folder / CLIP_VISION_NAME)
    return folder
