"""DSD sampling: FLUX flow matching, Euler, dynamic shift, two-scale true CFG from the third step.

Three predictions per step when true CFG is on (docs/method.md §2):
  e_full = (prompt, condition), e_t0 = (negative prompt, condition), e_00 = (negative prompt, ZERO tokens)
  e = e_00 + s_i (e_t0 - e_00) + s_t (e_full - e_t0)
It runs only when ``s_i > 1`` (as the authors' code) and only from ``cfg_start_step`` (2, i.e. the
third step); otherwise each step is a single ``e_full`` pass. The three branches are evaluated
in one batched transformer call by default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .model import DSDTransformer
from .tokens import FLUX_LATENT_CHANNELS, flux_sigmas, text_ids

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextConditioning:
    """Encoded prompt: T5 sequence ``[B, L, D]`` and CLIP pooled ``[B, P]``."""

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor

    def repeat_to(self, batch: int) -> TextConditioning:
        if self.prompt_embeds.shape[0] == batch:
            return self
        if self.prompt_embeds.shape[0] != 1:
            raise ValueError(f"cannot broadcast a text batch of {self.prompt_embeds.shape[0]} to {batch}")
        return TextConditioning(self.prompt_embeds.expand(batch, -1, -1), self.pooled.expand(batch, -1))


@dataclass(frozen=True)
class GuidanceConfig:
    guidance: float = 3.5  # FLUX.1-dev distilled guidance embedding
    image_guidance: float = 1.0  # s_i
    text_guidance: float = 1.0  # s_t
    cfg_start_step: int = 2  # steps 0 and 1 use e_full alone

    @property
    def true_cfg(self) -> bool:
        return self.image_guidance > 1.0

    def cfg_at(self, step: int) -> bool:
        return self.true_cfg and step >= self.cfg_start_step


def combine_cfg(e_full: torch.Tensor, e_t0: torch.Tensor, e_00: torch.Tensor, image_guidance: float, text_guidance: float) -> torch.Tensor:
    """DSD's two-scale true CFG."""
    return e_00 + image_guidance * (e_t0 - e_00) + text_guidance * (e_full - e_t0)


@dataclass
class SamplerStats:
    """Counts for tests and benchmarks: transformer calls and predictions (branch evaluations)."""

    model_calls: int = 0
    predictions: int = 0
    predictions_per_step: list[int] = field(default_factory=list)


class _Predictor:
    """The transformer's velocity for one Euler step: one pass, or DSD's three branches."""

    def __init__(self, model: DSDTransformer, cond: torch.Tensor, text: TextConditioning,
                 negative_text: TextConditioning | None, img_ids: torch.Tensor, txt_ids: torch.Tensor,
                 guidance: GuidanceConfig, batch_branches: bool, stats: SamplerStats) -> None:  # fmt: skip
        self.model, self.text, self.negative_text = model, text, negative_text
        self.guidance, self.batch_branches, self.stats = guidance, batch_branches, stats
        self.device, self.dtype = model.device, model.dtype
        self.cond = cond.to(device=self.device, dtype=self.dtype)
        self.zeros = torch.zeros_like(self.cond)  # e_00: condition tokens exactly zero
        self.img_ids, self.txt_ids = img_ids.to(self.device), txt_ids
        self.batch = cond.shape[0]
        self.g = None
        if getattr(model.config, "guidance_embeds", True):
            self.g = torch.full((self.batch,), guidance.guidance, device=self.device, dtype=torch.float32)

    def run(self, x: torch.Tensor, c: torch.Tensor, t: TextConditioning, sigma: torch.Tensor) -> torch.Tensor:
        k = x.shape[0]
        self.stats.model_calls += 1
        self.stats.predictions += k // self.batch
        length = t.prompt_embeds.shape[1]
        # a negative prompt may encode to another length than the prompt: ids follow each text
        txt_ids = self.txt_ids if self.txt_ids.shape[0] == length else text_ids(length)
        return self.model(
            hidden_states=x.to(self.dtype),
            condition_tokens=c,
            encoder_hidden_states=t.prompt_embeds.to(device=self.device, dtype=self.dtype),
            pooled_projections=t.pooled.to(device=self.device, dtype=self.dtype),
            timestep=sigma.expand(k).to(device=self.device, dtype=self.dtype),
            img_ids=self.img_ids,
            txt_ids=txt_ids.to(self.device),
            guidance=self.g.repeat(k // self.batch).to(self.dtype) if self.g is not None else None,
        ).to(torch.float32)

    def velocity(self, x: torch.Tensor, step: int, sigma: torch.Tensor) -> torch.Tensor:
        if not self.guidance.cfg_at(step):
            return self.run(x, self.cond, self.text, sigma)
        text, neg = self.text, self.negative_text
        assert neg is not None  # checked by sample_tokens
        if self.batch_branches and neg.prompt_embeds.shape[1] == text.prompt_embeds.shape[1]:
            both = TextConditioning(
                torch.cat([text.prompt_embeds, neg.prompt_embeds, neg.prompt_embeds]),
                torch.cat([text.pooled, neg.pooled, neg.pooled]),
            )
            out = self.run(torch.cat([x, x, x]), torch.cat([self.cond, self.cond, self.zeros]), both, sigma)
            e_full, e_t0, e_00 = out.chunk(3)
        else:
            e_full = self.run(x, self.cond, text, sigma)
            e_t0 = self.run(x, self.cond, neg, sigma)
            e_00 = self.run(x, self.zeros, neg, sigma)
        return combine_cfg(e_full, e_t0, e_00, self.guidance.image_guidance, self.guidance.text_guidance)


def _checked_condition(condition_tokens: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    if condition_tokens.shape[0] == 1 and noise.shape[0] > 1:
        condition_tokens = condition_tokens.expand(noise.shape[0], -1, -1)
    if condition_tokens.shape != noise.shape:
        raise ValueError(f"condition tokens {tuple(condition_tokens.shape)} do not match noise {tuple(noise.shape)}")
    return condition_tokens


def _checked_negative(guidance: GuidanceConfig, negative_text: TextConditioning | None, batch: int) -> TextConditioning | None:
    if guidance.text_guidance != 1.0 and not guidance.true_cfg:
        logger.warning(
            "text_guidance=%s has no effect with image_guidance<=1: DSD's true CFG runs only when image_guidance > 1",
            guidance.text_guidance,
        )
    if not guidance.true_cfg:
        return negative_text
    if negative_text is None:
        raise ValueError("true CFG (image_guidance > 1) needs a negative prompt encoding")
    return negative_text.repeat_to(batch)


def sample_tokens(
    model: DSDTransformer,
    noise: torch.Tensor,
    condition_tokens: torch.Tensor,
    text: TextConditioning,
    img_ids: torch.Tensor,
    txt_ids: torch.Tensor,
    sigmas: torch.Tensor | None = None,
    steps: int = 28,
    guidance: GuidanceConfig = GuidanceConfig(),
    negative_text: TextConditioning | None = None,
    batch_branches: bool = True,
    stats: SamplerStats | None = None,
    progress: bool = False,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Euler flow-matching from packed ``noise`` ``[B, N, 64]``; returns packed clean tokens.

    ``sigmas`` default to FluxPipeline's shifted schedule for ``N`` tokens and ``steps`` steps.
    """
    b, n, _ = noise.shape
    cond = _checked_condition(condition_tokens, noise)
    sigmas = (flux_sigmas(steps, n) if sigmas is None else sigmas).to(torch.float32)
    negative_text = _checked_negative(guidance, negative_text, b)
    stats = stats if stats is not None else SamplerStats()
    predictor = _Predictor(model, cond, text.repeat_to(b), negative_text, img_ids, txt_ids, guidance,
                           batch_branches, stats)  # fmt: skip
    x = noise.to(device=model.device, dtype=torch.float32)
    num_steps = len(sigmas) - 1
    iterator = range(num_steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="DSD sampling", unit="step")
    for i in iterator:
        before = stats.predictions
        v = predictor.velocity(x, i, sigmas[i])
        stats.predictions_per_step.append(stats.predictions - before)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
        if callback is not None:
            callback(i, num_steps, x)
    return x


def make_noise(batch: int, latent_height: int, latent_width: int, seed: int, channels: int = FLUX_LATENT_CHANNELS) -> torch.Tensor:
    """Canvas noise ``[B, 16, h, w]`` exactly as ComfyUI's ``prepare_noise`` draws it (CPU generator, fp32)."""
    gen = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn((batch, channels, latent_height, latent_width), generator=gen, dtype=torch.float32)
