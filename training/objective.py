"""DSD's training objective: rectified flow over the whole canvas (docs/method.md §4).

``x_t = (1 - t) x0 + t noise`` with ``x0`` the target canvas ``[reference | target]``; the
model sees ``x_t``, the condition canvas ``[reference | black]`` through ``c_embedder``, the
caption and ``t`` (FLUX's sigma), and regresses the velocity ``noise - x0`` with an MSE over
every token of both frames (optionally weighted per sample by ``training.loss_weighting``, diffusers'
``compute_loss_weighting_for_sd3``). Timesteps follow FLUX's recipe: logit-normal or uniform (diffusers'
``compute_density_for_timestep_sampling``), optionally shifted for the canvas token count as the
sampling schedule is. Caption dropout swaps in
the empty-prompt embedding and reference dropout zeroes the condition tokens: the two
unconditional branches DSD's true CFG needs at inference. With k references (a row of k + 1
frames) ``reference_frame_dropout`` also zeroes single reference frames' condition tokens, so the
model learns to use any subset of the references it is given.

All randomness comes from one CPU ``torch.Generator`` so that a resumed run draws exactly
what the uninterrupted run would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dsd.model import DSDTransformer
from dsd.tokens import dynamic_shift_mu, image_ids, pack, text_ids

from .config import TrainingConfig


@dataclass
class Batch:
    """One micro-batch of encoded pairs (model-space latents, unpacked) and text embeddings."""

    cond: torch.Tensor  # [B, 16, h, w]  condition canvas [reference | black]
    target: torch.Tensor  # [B, 16, h, w]  target canvas [reference | target]
    prompt_embeds: torch.Tensor  # [B, L, D] T5
    pooled: torch.Tensor  # [B, P] CLIP
    keys: list[str]
    references: int = 1  # k: reference frames of the canvas (k + 1 frames in all)

    @property
    def latent_hw(self) -> tuple[int, int]:
        return int(self.target.shape[-2]), int(self.target.shape[-1])


def sample_timesteps(cfg: TrainingConfig, batch: int, n_tokens: int, generator: torch.Generator) -> torch.Tensor:
    """Sigmas in (0, 1): logit-normal(mean, std) or uniform (diffusers' SD3 density), optionally FLUX's resolution shift."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    scheme = "logit_normal" if cfg.timestep_sampling == "logit_normal" else "uniform"
    t = compute_density_for_timestep_sampling(scheme, batch, cfg.logit_mean, cfg.logit_std, generator=generator)
    if cfg.resolution_shift:
        mu = math.exp(dynamic_shift_mu(n_tokens))
        t = mu * t / (1 + (mu - 1) * t)  # == dsd.tokens.time_shift(mu, t) with sigma 1, safe at t=0
    return t.clamp(1e-5, 1.0 - 1e-5)


@dataclass
class Draws:
    """Everything random about one micro-batch (drawn up front, in a fixed order)."""

    noise: torch.Tensor
    t: torch.Tensor
    drop_caption: torch.Tensor  # bool [B]
    drop_reference: torch.Tensor  # bool [B]
    drop_frames: torch.Tensor | None = None  # bool [B, k]: single reference frames dropped (k > 1)


def draw(cfg: TrainingConfig, tokens_shape: tuple[int, int, int], generator: torch.Generator, references: int = 1) -> Draws:
    b, n, _ = tokens_shape
    noise = torch.randn(tokens_shape, generator=generator)
    t = sample_timesteps(cfg, b, n, generator)
    u = torch.rand(2, b, generator=generator)
    frames = None
    if references > 1 and cfg.reference_frame_dropout > 0:  # drawn last: one reference draws what it always did
        frames = torch.rand(b, references, generator=generator) < cfg.reference_frame_dropout
    return Draws(noise, t, u[0] < cfg.caption_dropout, u[1] < cfg.reference_dropout, frames)


def condition_mask(drop_frames: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """bool ``[B, N]`` over packed tokens: True where the token lies in a dropped reference frame.

    Tokens are packed row by row over the ``(h/2) x (w/2)`` patch grid; the canvas is a row of k + 1
    equal frames, so a token's frame is its column // (columns per frame).
    """
    b, k = drop_frames.shape
    rows, cols = latent_hw[0] // 2, latent_hw[1] // 2
    frame = torch.arange(cols) // (cols // (k + 1))  # k for the target frame
    padded = torch.cat([drop_frames, torch.zeros(b, 1, dtype=torch.bool)], dim=1)  # the target frame is never dropped
    return padded[:, frame].repeat(1, rows)


def flow_matching_loss(
    model: DSDTransformer | torch.nn.Module,
    batch: Batch,
    cfg: TrainingConfig,
    generator: torch.Generator,
    empty_text: tuple[torch.Tensor, torch.Tensor],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean squared velocity error over all canvas tokens (both frames). Returns (loss, stats)."""
    h, w = batch.latent_hw
    x0 = pack(batch.target.float())
    cond = pack(batch.cond.float())
    d = draw(cfg, tuple(x0.shape), generator, batch.references)
    b = x0.shape[0]
    t = d.t.view(b, 1, 1)
    x_t = (1.0 - t) * x0 + t * d.noise
    velocity = d.noise - x0
    cond = torch.where(d.drop_reference.view(b, 1, 1), torch.zeros_like(cond), cond)
    if d.drop_frames is not None:
        cond = torch.where(condition_mask(d.drop_frames, (h, w)).unsqueeze(-1), torch.zeros_like(cond), cond)
    prompt, pooled = batch.prompt_embeds.float(), batch.pooled.float()
    if d.drop_caption.any():
        e_prompt, e_pooled = empty_text
        mask = d.drop_caption
        prompt = torch.where(mask.view(b, 1, 1), e_prompt.float().expand_as(prompt), prompt)
        pooled = torch.where(mask.view(b, 1), e_pooled.float().expand_as(pooled), pooled)
    cfg_model = getattr(model, "config", None) or getattr(getattr(model, "module", None), "config", None)
    guidance = None
    if getattr(cfg_model, "guidance_embeds", False):
        guidance = torch.full((b,), cfg.guidance, dtype=dtype, device=device)
    pred = model(
        hidden_states=x_t.to(device=device, dtype=dtype),
        condition_tokens=cond.to(device=device, dtype=dtype),
        encoder_hidden_states=prompt.to(device=device, dtype=dtype),
        pooled_projections=pooled.to(device=device, dtype=dtype),
        timestep=d.t.to(device=device, dtype=dtype),
        img_ids=image_ids(h, w, device=device),
        txt_ids=text_ids(prompt.shape[1], device=device),
        guidance=guidance,
    )
    loss = _weighted_mse(pred.float(), velocity.to(device=device, dtype=torch.float32), d.t.to(device), cfg.loss_weighting)
    stats = {
        "t_mean": float(d.t.mean()),
        "caption_dropped": float(d.drop_caption.float().mean()),
        "reference_dropped": float(d.drop_reference.float().mean()),
        "references": float(batch.references),
    }
    return loss, stats


def _weighted_mse(pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor, scheme: str) -> torch.Tensor:
    """Mean over every token and channel; ``scheme`` != "none" weights each sample by diffusers' SD3 weighting of its t."""
    if scheme == "none":
        return torch.nn.functional.mse_loss(pred, target)
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    weight = compute_loss_weighting_for_sd3(scheme, sigmas=t.float()).view(-1, 1, 1)
    return (weight * (pred - target) ** 2).mean()
