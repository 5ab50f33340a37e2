"""Tiny, deterministic, random-initialised FLUX-architecture fixtures, built offline.

Everything the tests and the demo need, with no model hub: a DSD transformer in the authors'
release layout and a LoRA in their format, the same transformer in ComfyUI/BFL keys, a
full-width (hidden 3072) variant ComfyUI's stock loader accepts from a file, a 16-channel
FLUX-compatible VAE, and tiny CLIP-L / T5 encoders with tokenizers built from code, enough for
``diffusers.FluxPipeline.from_pretrained(folder)``. Same seed, same bytes.
"""

from __future__ import annotations

import json
import logging
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .io import atomic_directory, atomic_save_safetensors, atomic_write_json
from .model import DSDTransformer
from .weights.layout import diffusers_to_bfl
from .weights.lora import LoraPair, lora_to_state_dict

logger = logging.getLogger(__name__)

TINY_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "guidance_embeds": True,
    "axes_dims_rope": [4, 6, 6],
}
# Stock ComfyUI detects FLUX from a file only at hidden 3072 (24 heads x 128, axes 16/56/56).
FULL_WIDTH_TRANSFORMER_CONFIG: dict[str, Any] = {
    **TINY_TRANSFORMER_CONFIG,
    "num_layers": 1,
    "num_single_layers": 0,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 768,
    "pooled_projection_dim": 768,
    "axes_dims_rope": [16, 56, 56],
}
TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "block_out_channels": [16, 16, 16, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}
# FLUX.1's own VAE layout (84 M parameters): the only KL VAE ComfyUI builds.
FULL_VAE_CONFIG: dict[str, Any] = {
    **TINY_VAE_CONFIG,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 1024,
}
TINY_LORA_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
    "proj_mlp", "proj_out",
)  # fmt: skip
FLUX_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


@torch.no_grad()
def _randomise(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Deterministic weights independent of torch's global RNG and of init code changes."""
    gen = _generator(seed)
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        if name.endswith(("norm.weight", "norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight")) or (
            p.ndim == 1 and ("norm" in name and name.endswith("weight"))
        ):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))
        else:
            p.copy_((std * torch.randn(p.shape, generator=gen, dtype=torch.float32)).to(p.dtype))


def make_tiny_transformer(seed: int = 0, config: dict[str, Any] | None = None, dtype: torch.dtype = torch.float32):
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_config(dict(config or TINY_TRANSFORMER_CONFIG))
    _randomise(model, seed)
    return model.to(dtype).eval()


def make_tiny_dsd(seed: int = 0, config: dict[str, Any] | None = None, zero_embedder: bool = False) -> DSDTransformer:
    model = DSDTransformer(make_tiny_transformer(seed, config))
    if not zero_embedder:
        with torch.no_grad():
            gen = _generator(seed + 1)
            model.c_embedder.weight.copy_(0.05 * torch.randn(model.c_embedder.weight.shape, generator=gen))
            model.c_embedder.bias.copy_(0.05 * torch.randn(model.c_embedder.bias.shape, generator=gen))
    return model.eval()


def make_tiny_lora(transformer: torch.nn.Module, rank: int = 4, seed: int = 0, alpha: float | None = None) -> dict[str, LoraPair]:
    """Random LoRA (non-zero up and down) on every targetable linear of the tiny FLUX."""
    gen = _generator(seed + 2)
    pairs: dict[str, LoraPair] = {}
    for name, module in sorted(transformer.named_modules(), key=lambda kv: kv[0]):
        if not isinstance(module, torch.nn.Linear):
            continue
        if not name.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            continue
        if not any(name.endswith(t) for t in TINY_LORA_TARGETS):
            continue
        down = 0.1 * torch.randn(rank, module.in_features, generator=gen)
        up = 0.1 * torch.randn(module.out_features, rank, generator=gen)
        pairs[name] = LoraPair(down=down, up=up, alpha=alpha)
    return pairs


@dataclass
class TinyRelease:
    root: Path
    transformer_dir: Path
    lora_path: Path
    model: DSDTransformer  # the transformer as released (embedder loaded, LoRA NOT merged)
    lora: dict[str, LoraPair]


def write_release(out_dir: str | Path, seed: int = 0, shards: int = 1, rank: int = 4, config: dict[str, Any] | None = None,
                  class_name: str = "FluxTransformer2DModel") -> TinyRelease:  # fmt: skip
    """The authors' published layout: ``transformer/`` (+ c_embedder, + stray PEFT keys) and the LoRA file.

    ``class_name`` is the config's ``_class_name``: a copy saved from the authors' code says
    ``FluxTransformer2DConditionalModel``.
    """
    root = Path(out_dir)
    tdir = root / "transformer"
    tdir.mkdir(parents=True, exist_ok=True)
    model = make_tiny_dsd(seed, config)
    lora = make_tiny_lora(model.transformer, rank=rank, seed=seed)
    state = {k: v.contiguous() for k, v in model.transformer.state_dict().items()}
    state.update(model.c_embedder_state_dict())
    # The release was saved from a PEFT-wrapped model: LoRA tensors ride along under .default keys.
    for module, pair in lora.items():
        state[f"{module}.lora_A.default.weight"] = pair.down
        state[f"{module}.lora_B.default.weight"] = pair.up
    cfg = {"_class_name": class_name, "_diffusers_version": "0.32.0.dev0", **(config or TINY_TRANSFORMER_CONFIG)}
    atomic_write_json(tdir / "config.json", cfg)
    keys = sorted(state)
    if shards <= 1:
        atomic_save_safetensors({k: state[k] for k in keys}, tdir / "diffusion_pytorch_model.safetensors", {"format": "pt"})
    else:
        weight_map: dict[str, str] = {}
        chunks = [keys[i::shards] for i in range(shards)]
        for i, chunk in enumerate(chunks, 1):
            name = f"diffusion_pytorch_model-{i:05d}-of-{shards:05d}.safetensors"
            atomic_save_safetensors({k: state[k] for k in chunk}, tdir / name, {"format": "pt"})
            weight_map.update({k: name for k in chunk})
        total = sum(t.numel() * t.element_size() for t in state.values())
        atomic_write_json(tdir / "diffusion_pytorch_model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    lora_path = root / "pytorch_lora_weights.safetensors"
    atomic_save_safetensors(lora_to_state_dict(lora), lora_path)
    return TinyRelease(root=root, transformer_dir=tdir, lora_path=lora_path, model=model, lora=lora)


def write_plain_flux(path: str | Path, model: DSDTransformer, layout: str = "bfl", dtype: torch.dtype | None = None) -> Path:
    """The base FLUX (no embedder) as one file: ``bfl`` (ComfyUI/BFL keys) or ``diffusers`` keys."""
    state = {k: v for k, v in model.transformer.state_dict().items()}
    if layout == "bfl":
        state = diffusers_to_bfl(state)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    atomic_save_safetensors(state, path)
    return Path(path)


def make_tiny_vae(seed: int = 0, config: dict[str, Any] | None = None):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_config(dict(config or TINY_VAE_CONFIG))
    _randomise(vae, seed + 10, std=0.1)
    return vae.eval()


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + ".,!?'-:;()/&"
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer():
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for c in string.ascii_lowercase + string.digits + ".,!?'-:;()/&":
        pieces.append(("\u2581" + c, -3.0))
        pieces.append((c, -4.0))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def make_tiny_text_encoders(seed: int = 0, dim: int = 32):
    """(clip, clip_tokenizer, t5, t5_tokenizer): CLIP pooled dim and T5 width both ``dim``."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok = _clip_tokenizer()
    t5_tok = _t5_tokenizer()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok), hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=dim,
            bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id,
        )
    )  # fmt: skip
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(t5_tok), d_model=dim, d_kv=8, d_ff=2 * dim, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    )  # fmt: skip
    _randomise(clip, seed + 20, std=0.1)
    _randomise(t5, seed + 30, std=0.1)
    return clip.eval(), clip_tok, t5.eval(), t5_tok


def make_tiny_pipeline(out_dir: str | Path, seed: int = 0, release: bool = False) -> Path:
    """A ``FluxPipeline`` folder (plain FLUX, like FLUX.1-dev) that diffusers loads offline.

    With ``release=True`` the transformer is written in the DSD release layout instead and a
    ``pytorch_lora_weights.safetensors`` is added beside it.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    out = Path(out_dir)
    clip, clip_tok, t5, t5_tok = make_tiny_text_encoders(seed)
    dsd = make_tiny_dsd(seed)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
        vae=make_tiny_vae(seed),
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=dsd.transformer,
    )
    with atomic_directory(out) as tmp:  # save_pretrained writes 0600 files; this gives them the umask's mode
        pipe.save_pretrained(tmp, safe_serialization=True)
    if release:
        write_release(out, seed=seed)
    atomic_write_json(out / "dsd_tiny.json", {"seed": seed, "kind": "tiny-flux-pipeline"})
    return out


@dataclass
class TinyFiles:
    root: Path
    flux_dir: Path  # FluxPipeline folder (plain FLUX)
    release_dir: Path  # authors' layout: transformer/ + pytorch_lora_weights.safetensors
    flux_bfl: Path  # base transformer, ComfyUI/BFL keys
    full_width_flux: Path | None = None  # hidden-3072 variant ComfyUI's stock loader accepts


def make_tiny(out_dir: str | Path, seed: int = 0, full_width: bool = False) -> TinyFiles:
    """Everything ``python -m dsd make-tiny DIR`` writes."""
    root = Path(out_dir)
    flux_dir = make_tiny_pipeline(root / "flux", seed)
    release = write_release(root / "dsd_release", seed=seed)
    flux_bfl = write_plain_flux(root / "flux_bfl.safetensors", release.model, layout="bfl")
    full = None
    if full_width:
        big = make_tiny_dsd(seed, FULL_WIDTH_TRANSFORMER_CONFIG)
        full = write_plain_flux(root / "flux_full_width_bf16.safetensors", big, layout="bfl", dtype=torch.bfloat16)
    (root / "README.txt").write_text(
        f"Tiny random DSD/FLUX fixtures made by `python -m dsd make-tiny` (seed {seed}). Not a real model.\n"
    )
    atomic_write_json(root / "manifest.json", {"seed": seed, "files": sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())})
    return TinyFiles(root=root, flux_dir=flux_dir, release_dir=release.root, flux_bfl=flux_bfl, full_width_flux=full)


def fixture_code_version() -> str:
    """Hash of this module's source: cached fixtures are rebuilt when the code that makes them changes."""
    import hashlib

    return hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:12]


def fixture_cache_dir() -> Path:
    """Where tests keep slow-to-build fixtures between runs (``DSD_FIXTURE_CACHE`` overrides)."""
    import os

    base = Path(os.environ.get("DSD_FIXTURE_CACHE", Path.home() / ".cache" / "dsd" / "fixtures"))
    path = base / fixture_code_version()
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- files ComfyUI's stock loaders accept -----------------------------------------------------------
CLIP_L_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}


@dataclass
class TinyComfyFiles:
    """Names are relative to their ComfyUI model folder (what a workflow's loader widget holds)."""

    models_dir: Path
    diffusion_model: str  # models/diffusion_models/: hidden-3072 FLUX, 1 double block, context/pooled 768, bf16
    vae: str  # models/vae/: FLUX VAE layout (diffusers keys; ComfyUI converts), random
    clip_l: str  # models/text_encoders/: full-size random CLIP-L (use CLIPLoader type=stable_diffusion)
    adapter: str  # models/dsd/: DSD adapter matching diffusion_model (embedder + rank-4 LoRA)
    model: DSDTransformer | None = None  # the same weights as diffusers modules (fp32 upcast of the bf16 file)

    def path(self, folder: str, name: str) -> Path:
        return self.models_dir / folder / name


def make_tiny_comfyui_files(models_dir: str | Path, seed: int = 0, keep_model: bool = False) -> TinyComfyFiles:
    """Write stock-loadable ComfyUI files (FLUX, VAE, CLIP-L) and a matching DSD adapter.

    ComfyUI detects FLUX from a file only at hidden 3072, builds KL VAEs only in FLUX's own layout
    and has no tiny T5 path, so these are the smallest files its stock loaders take. Reuses files
    already written for the same seed.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    from .weights.adapter import DSDAdapter, save_adapter

    root = Path(models_dir)
    files = TinyComfyFiles(
        models_dir=root,
        diffusion_model="dsd_tiny_flux_full_width.safetensors",
        vae="dsd_tiny_flux_vae.safetensors",
        clip_l="dsd_tiny_clip_l.safetensors",
        adapter="dsd_tiny_adapter_full_width.safetensors",
    )
    stamp = root / f".dsd_tiny_comfy_seed{seed}.json"
    version = fixture_code_version()
    have_all = stamp.is_file() and json.loads(stamp.read_text()).get("version") == version and all(
        files.path(f, n).is_file()
        for f, n in (("diffusion_models", files.diffusion_model), ("vae", files.vae), ("text_encoders", files.clip_l), ("dsd", files.adapter))
    )
    if have_all and not keep_model:
        return files
    model = make_tiny_dsd(seed, FULL_WIDTH_TRANSFORMER_CONFIG)
    # Round through bf16 so the diffusers-side copy equals what ComfyUI reads from the file.
    model = model.to(torch.bfloat16).to(torch.float32)
    if not have_all:
        write_plain_flux(files.path("diffusion_models", files.diffusion_model), model, layout="bfl", dtype=torch.bfloat16)
        lora = make_tiny_lora(model.transformer, rank=4, seed=seed)
        save_adapter(
            DSDAdapter(c_embedder={k: v.clone() for k, v in model.c_embedder_state_dict().items()}, lora=lora),
            files.path("dsd", files.adapter),
            {"source": f"dsd.tiny seed {seed} (random)"},
        )
        vae = make_tiny_vae(seed, FULL_VAE_CONFIG)
        atomic_save_safetensors({k: v.to(torch.float16) for k, v in vae.state_dict().items()}, files.path("vae", files.vae))
        del vae
        clip = CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG))
        _randomise(clip, seed + 40, std=0.02)
        atomic_save_safetensors({k: v.to(torch.float16) for k, v in clip.state_dict().items()}, files.path("text_encoders", files.clip_l))
        del clip
        atomic_write_json(stamp, {"seed": seed, "version": version})
    if keep_model:
        files.model = model
    return files
