"""A learnable tiny FLUX pipeline for the toy domain (issue 19), built in code, nothing downloaded.

- VAE: a real diffusers ``AutoencoderKL`` (FLUX layout: 8x down, 16 latent channels) whose weights are
  set, not trained, so that it is (near) linear and reconstructs the toy pictures: the encoder writes the
  4x4-pixel means of each 8x8 block (12 channels: 2x2 sub-blocks x RGB) plus 4 redundant block means;
  the decoder puts the sub-blocks back (a least-squares 3x3 upsampling fitted once on toy panels) and
  repeats them to full size. Its non-linear parts are made exact identities: every resnet's last conv and
  the attention's output projection are zero (residual only), and the final GroupNorm + SiLU see the data
  beside its negation and two large constants, which fixes the group's mean at 0 and its spread at a
  constant, and a +20 offset puts SiLU in its linear range.
- Text encoders: the tiny random CLIP of ``dsd.tiny`` and a random T5 whose tokenizer knows the toy
  domain's words (and the template-mode panel words) as single pieces, so every prompt word is a token.
- Transformer: a small FLUX (default init), trained by LoRA + ``c_embedder`` like the real one.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datagen.teacher import toy_domain as dom

K_CONST = 1000.0  # the constants beside the data in the final GroupNorms (keep the spread fixed)
BETA = 20.0  # SiLU(x + 20) == x + 20 to 4e-8 for |x| <= 1
# Channels per VAE level: 8 at the two finest (3 colours, and at the decoder's end [x, -x, K, -K]), 32 at the
# coarse ones (12 sub-block channels, their negations, 2 constants): full-resolution convs stay cheap.
TOY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": [8, 8, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1, "norm_num_groups": 1, "sample_size": 128, "scaling_factor": 1.0, "shift_factor": 0.0,
    "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True,
}  # fmt: skip
TOY_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1, "in_channels": 64, "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 32,
    "num_attention_heads": 2, "joint_attention_dim": 64, "pooled_projection_dim": 32, "guidance_embeds": False,
    "axes_dims_rope": [8, 12, 12],
}  # fmt: skip
T5_DIM = 64


def _zero_residual_branches(module: torch.nn.Module) -> None:
    """Every resnet and attention of the VAE returns its input (a channel-changing shortcut keeps the first ones)."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    for m in module.modules():
        if isinstance(m, ResnetBlock2D):
            m.conv2.weight.zero_()
            m.conv2.bias.zero_()
            if m.conv_shortcut is not None:
                m.conv_shortcut.weight.zero_()
                m.conv_shortcut.bias.zero_()
                n = min(m.conv_shortcut.weight.shape[:2])
                m.conv_shortcut.weight[:n, :n, 0, 0] = torch.eye(n)
        elif isinstance(m, Attention):
            m.to_out[0].weight.zero_()
            m.to_out[0].bias.zero_()


def _set_norm_out(norm: torch.nn.GroupNorm) -> None:
    """With channels [x, -x, K, -K, 0...] the group's mean is 0 and its std K sqrt(2/C) (to 1e-5): y = x + BETA."""
    norm.weight.fill_(K_CONST * (2.0 / norm.num_channels) ** 0.5)
    norm.bias.fill_(BETA)


def _data_and_constants(conv: torch.nn.Conv2d, n: int) -> None:
    """Append the negation of channels [0, n) and the two constants to ``conv``'s outputs."""
    conv.weight[n : 2 * n] = -conv.weight[:n]
    conv.bias[n : 2 * n] = -conv.bias[:n]
    conv.bias[2 * n] = K_CONST
    conv.bias[2 * n + 1] = -K_CONST


def _set_encoder(enc: torch.nn.Module) -> None:
    enc.conv_in.weight.zero_()
    enc.conv_in.bias.zero_()
    for c in range(3):
        enc.conv_in.weight[c, c, 1, 1] = 1.0
    for i, block in enumerate(enc.down_blocks[:3]):
        conv = block.downsamplers[0].conv  # 3x3 stride 2 after padding (0, 1, 0, 1): taps 0/1 are x[2i], x[2i+1]
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(3):
            if i < 2:  # 2x2 mean: 8x8 -> 4x4-pixel means after two of them
                conv.weight[c, c, 0:2, 0:2] = 0.25
            else:  # space to depth: the 2x2 sub-blocks of an 8x8 block become 4 channels
                for di in range(2):
                    for dj in range(2):
                        conv.weight[c * 4 + di * 2 + dj, c, di, dj] = 1.0
        if i == 2:
            _data_and_constants(conv, 12)
    _set_norm_out(enc.conv_norm_out)
    out = enc.conv_out
    out.weight.zero_()
    out.bias.zero_()
    for k in range(12):
        out.weight[k, k, 1, 1] = 1.0
    for c in range(3):  # latent 12-14: each colour's block mean; 15: the grey block mean (redundant)
        out.weight[12 + c, c * 4 : c * 4 + 4, 1, 1] = 0.25
    out.weight[15, :12, 1, 1] = 1.0 / 12
    out.bias[:16] = -BETA * out.weight[:16, :, 1, 1].sum(dim=1)
    out.bias[16:] = -30.0  # log-variance at its floor: the posterior is its mean


def _set_decoder(dec: torch.nn.Module, upsample: torch.Tensor, upsample_bias: torch.Tensor) -> None:
    dec.conv_in.weight.zero_()
    dec.conv_in.bias.zero_()
    for k in range(12):
        dec.conv_in.weight[k, k, 1, 1] = 1.0
    for i, block in enumerate(dec.up_blocks[:3]):
        conv = block.upsamplers[0].conv  # nearest 2x, then this 3x3 conv
        conv.weight.zero_()
        conv.bias.zero_()
        if i == 0:
            conv.weight[:3, :12] = upsample
            conv.bias[:3] = upsample_bias
        else:
            for c in range(3):
                conv.weight[c, c, 1, 1] = 1.0
        if i == 2:
            _data_and_constants(conv, 3)
    _set_norm_out(dec.conv_norm_out)
    dec.conv_out.weight.zero_()
    dec.conv_out.bias.fill_(-BETA)
    for c in range(3):
        dec.conv_out.weight[c, c, 1, 1] = 1.0


def toy_panels(n: int = 48, side: int = 128, seed: int = 0) -> torch.Tensor:
    """``n`` toy panels ``[n, 3, side, side]`` in [-1, 1] (random identities and contexts)."""
    rng = np.random.default_rng(seed)
    ids, ctxs = dom.all_identities(), dom.all_contexts()
    out = []
    for _ in range(n):
        img = dom.draw_panel(ids[rng.integers(len(ids))], ctxs[rng.integers(len(ctxs))], side)
        out.append(torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1.0)
    return torch.stack(out)


def _fit_upsample(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares 3x3 weights: nearest-2x-upsampled sub-block channels -> the 4x4-pixel means."""
    import torch.nn.functional as F

    fine = F.avg_pool2d(images, 4)  # the 4x4-pixel means (what the latent holds)
    coarse = F.pixel_unshuffle(fine, 2)  # [n, 12, h/8, w/8], channel c*4 + di*2 + dj
    up = F.interpolate(coarse, scale_factor=2, mode="nearest")
    feats = F.unfold(up, 3, padding=1)  # [n, 108, L]
    x = torch.cat([feats.transpose(1, 2).reshape(-1, 108), torch.ones(feats.shape[0] * feats.shape[2], 1)], 1)
    y = fine.permute(0, 2, 3, 1).reshape(-1, 3)
    sol = torch.linalg.lstsq(x.double(), y.double()).solution.float()  # [109, 3]
    return sol[:108].T.reshape(3, 12, 3, 3), sol[108]


@torch.no_grad()
def make_toy_vae(fit_images: torch.Tensor | None = None):
    """The near-linear FLUX-layout AutoencoderKL for the toy domain; ``scaling_factor`` whitens its latents."""
    from diffusers import AutoencoderKL

    images = toy_panels() if fit_images is None else fit_images
    vae = AutoencoderKL.from_config(dict(TOY_VAE_CONFIG))
    _zero_residual_branches(vae)
    _set_encoder(vae.encoder)
    _set_decoder(vae.decoder, *_fit_upsample(images))
    z = vae.encode(images).latent_dist.mean
    vae.register_to_config(shift_factor=round(float(z.mean()), 4), scaling_factor=round(1.0 / float(z.std()), 4))
    return vae.eval()


@torch.no_grad()
def reconstruction_psnr(vae, images: torch.Tensor) -> float:
    """PSNR (dB, images in [-1, 1] so peak-to-peak 2) of decode(encode(x).mean)."""
    rec = vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)
    mse = float(((rec - images) ** 2).mean())
    return 10 * float(np.log10(4.0 / max(mse, 1e-12)))


def toy_words() -> list[str]:
    """Every word the toy prompts use: domain words, template-mode panel words, the grid templates."""
    from datagen import prompts as P

    texts = [*dom.SHAPES, *dom.COLOURS, *dom.PATTERNS, *dom.BACKGROUNDS, *dom.SETTING_BACKGROUND, *dom.POSE_PLACEMENT,
             *P._LIGHTING, *P._SETTINGS, *P._VARIATIONS["object"]["pose"], *P.TEMPLATES.values(),
             "a an the with same object in on of", *P.panel_positions(2, 2), *P.panel_positions(1, 2)]  # fmt: skip
    words = set()
    for t in texts:
        words.update(w for w in re.split(r"[\s,.;:{}]+", t.casefold()) if w and w.isascii())
    return sorted(words)


def toy_t5_tokenizer():
    """A T5 tokenizer whose pieces are the toy's words (one token each) plus single characters."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in toy_words()]
    for c in string.ascii_lowercase + string.digits + ".,!?'-:;()/&":
        pieces += [("\u2581" + c, -3.0), (c, -4.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def make_toy_text_encoders(seed: int = 0):
    """(clip, clip_tokenizer, t5, t5_tokenizer): the tiny CLIP, and a word-level T5 of width ``T5_DIM``."""
    from transformers import T5Config, T5EncoderModel

    from dsd.tiny import _randomise, make_tiny_text_encoders

    clip, clip_tok, _, _ = make_tiny_text_encoders(seed, dim=TOY_TRANSFORMER_CONFIG["pooled_projection_dim"])
    t5_tok = toy_t5_tokenizer()
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(t5_tok), d_model=T5_DIM, d_kv=16, d_ff=2 * T5_DIM, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=16, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    )  # fmt: skip
    _randomise(t5, seed + 30, std=0.3)
    return clip, clip_tok, t5.eval(), t5_tok


# The toy loop's transformer (issue 19): width 128 is the smallest at which the toy learns the context and the
# reference (README, "Recipe probe"); width 64 learns neither in 2,000 steps.
TOY_LOOP_TRANSFORMER_CONFIG: dict[str, Any] = {**TOY_TRANSFORMER_CONFIG, "num_attention_heads": 4}


def make_toy_transformer(seed: int = 0, config: dict[str, Any] | None = None, adaln_zero: bool = False):
    """A random toy FLUX. ``adaln_zero``: every modulation (the blocks' and the final norm's) starts at zero,
    DiT's adaLN-Zero, so each block begins as an identity and a LoRA that adapts the modulations trains the
    untrained base from a well-conditioned start instead of fighting random residual branches."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel.from_config(dict(config or TOY_TRANSFORMER_CONFIG)).eval()
    if adaln_zero:
        with torch.no_grad():
            mods = [b.norm1.linear for b in model.transformer_blocks] + [b.norm1_context.linear for b in model.transformer_blocks]
            mods += [b.norm.linear for b in model.single_transformer_blocks] + [model.norm_out.linear]
            for lin in mods:
                lin.weight.zero_()
                lin.bias.zero_()
    return model


def make_toy_pipeline(out_dir: str | Path, seed: int = 0, config: dict[str, Any] | None = None,
                      adaln_zero: bool = False) -> dict[str, float]:
    """Write the toy ``FluxPipeline`` folder; returns its VAE's reconstruction PSNR on held-out toy panels."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from dsd.io import atomic_write_json
    from dsd.tiny import FLUX_SCHEDULER_CONFIG

    vae = make_toy_vae()
    psnr = reconstruction_psnr(vae, toy_panels(32, seed=seed + 1000))
    clip, clip_tok, t5, t5_tok = make_toy_text_encoders(seed)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG), vae=vae, text_encoder=clip,
        tokenizer=clip_tok, text_encoder_2=t5, tokenizer_2=t5_tok, transformer=make_toy_transformer(seed, config, adaln_zero),
    )  # fmt: skip
    pipe.save_pretrained(Path(out_dir), safe_serialization=True)
    info = {"seed": seed, "kind": "toy-flux-pipeline", "vae_psnr_db": round(psnr, 2)}
    atomic_write_json(Path(out_dir) / "dsd_toy.json", info)
    return info
