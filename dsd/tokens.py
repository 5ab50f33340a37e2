"""FLUX latent conventions: shift/scale, 2x2 packing, position ids, the dynamic timestep shift.

These are the exact conventions of the authors' code (and of diffusers' FluxPipeline and
ComfyUI's Flux): latents are ``(z - shift) * scale``; packing takes 2x2 latent patches to one
token with channel order ``(c ph pw)``; ids are ``(0, row, col)`` of the patch grid.
"""

from __future__ import annotations

import math

import torch

FLUX_LATENT_CHANNELS = 16
FLUX_SHIFT_FACTOR = 0.1159
FLUX_SCALING_FACTOR = 0.3611
VAE_DOWNSCALE = 8
PATCH = 2
FLUX_PACKED_CHANNELS = FLUX_LATENT_CHANNELS * PATCH * PATCH  # 64: one token = a 2x2 patch of 16 channels
PIXELS_PER_TOKEN = VAE_DOWNSCALE * PATCH  # 16


class CanvasSizeError(ValueError):
    """A canvas or latent size that FLUX packing cannot represent."""


def check_pixel_size(height: int, width: int) -> None:
    bad = [f"{name}={v}" for name, v in (("height", height), ("width", width)) if v <= 0 or v % PIXELS_PER_TOKEN]
    if bad:
        raise CanvasSizeError(
            f"canvas size {height}x{width} (HxW) is not usable: {', '.join(bad)} must be a positive multiple of "
            f"{PIXELS_PER_TOKEN} (FLUX packs 2x2 patches of the 8x-downscaled latent). "
            f"Try {max(16, round(height / 16) * 16)}x{max(16, round(width / 16) * 16)}."
        )


def latent_to_model(z: torch.Tensor, shift: float = FLUX_SHIFT_FACTOR, scale: float = FLUX_SCALING_FACTOR) -> torch.Tensor:
    """VAE latent -> diffusion-model space, the FLUX way."""
    return (z - shift) * scale


def model_to_latent(z: torch.Tensor, shift: float = FLUX_SHIFT_FACTOR, scale: float = FLUX_SCALING_FACTOR) -> torch.Tensor:
    return z / scale + shift


def pack(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, (H/2)(W/2), C*4]`` with channel order ``(c ph pw)``."""
    if latents.ndim != 4:
        raise CanvasSizeError(f"expected latents [B, C, H, W], got shape {tuple(latents.shape)}")
    b, c, h, w = latents.shape
    if h % PATCH or w % PATCH:
        raise CanvasSizeError(f"latent size {h}x{w} must be even to pack 2x2 patches")
    x = latents.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    x = x.permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack(tokens: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``[B, N, C*4] -> [B, C, H, W]`` for a latent of ``H x W``."""
    b, n, d = tokens.shape
    hp, wp = latent_height // PATCH, latent_width // PATCH
    if n != hp * wp or d % (PATCH * PATCH):
        raise CanvasSizeError(
            f"{n} tokens of width {d} do not form a {latent_height}x{latent_width} latent ({hp * wp} tokens expected)"
        )
    c = d // (PATCH * PATCH)
    x = tokens.view(b, hp, wp, c, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, latent_height, latent_width)


def image_ids(latent_height: int, latent_width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """FLUX position ids ``[(H/2)(W/2), 3]``: (0, row, col) over the whole canvas, no frame index."""
    hp, wp = latent_height // PATCH, latent_width // PATCH
    ids = torch.zeros(hp, wp, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(hp, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(wp, device=device, dtype=dtype)[None, :]
    return ids.reshape(hp * wp, 3)


def text_ids(length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(length, 3, device=device, dtype=dtype)


def token_count(height: int, width: int) -> int:
    """Image tokens of a pixel canvas (2048 at 512x1024)."""
    check_pixel_size(height, width)
    return (height // PIXELS_PER_TOKEN) * (width // PIXELS_PER_TOKEN)


def dynamic_shift_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """FLUX.1-dev's resolution-dependent shift: linear in the token count (diffusers' calculate_shift)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)


def time_shift(mu: float, t: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)


def flux_sigmas(steps: int, image_seq_len: int, **shift_kwargs: float) -> torch.Tensor:
    """The ``steps + 1`` noise levels of FluxPipeline: shifted ``linspace(1, 1/steps, steps)`` then 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
    sig = time_shift(dynamic_shift_mu(image_seq_len, **shift_kwargs), t)
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)]).to(torch.float32)
