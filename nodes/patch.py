"""DSD on ComfyUI's own FLUX without touching its weights.

``img = img_in(noisy) + c_embedder(condition_tokens)`` is done by a ``post_input`` patch, which
runs in ``Flux.forward_orig`` right after ``img_in``. The patch cannot see per-cond data, so the
condition tokens travel as a ``model_conds`` entry (batched per cond/uncond by the sampler,
arriving at ``Flux.forward`` as the keyword :data:`MODEL_COND_KEY`) and a DIFFUSION_MODEL
wrapper binds them to the patch for that one call. The embedder is a small fp32 ``Linear`` of
its own (never quantised, never merged), so bf16, fp8 and GGUF bases all work and no base
weight is ever read.
"""

from __future__ import annotations

import logging

import comfy.conds
import comfy.ldm.flux.model
import comfy.model_base
import comfy.patcher_extension
import comfy.utils
import torch
import torch.nn.functional as F

from ..dsd.tokens import FLUX_LATENT_CHANNELS, FLUX_PACKED_CHANNELS, PATCH
from ..dsd.weights.adapter import check_reference_count
from .errors import DSDBatchError, DSDModelMismatchError, DSDNodeError

logger = logging.getLogger(__name__)

MODEL_COND_KEY = "dsd_condition"
WRAPPER_KEY = "dsd"


class DSDTokens(comfy.conds.CONDRegular):
    """Packed condition tokens ``[B, N, 64]``: batch 1 broadcasts, any other mismatch is an error
    (ComfyUI's CONDRegular would silently repeat or truncate). ``references`` is the canvas's k (reference
    frames), carried so DSD Guider can compare it with what the adapter was trained for."""

    def __init__(self, cond: torch.Tensor, references: int = 1) -> None:
        super().__init__(cond)
        self.references = references

    def _copy_with(self, cond):
        return self.__class__(cond, self.references)

    def process_cond(self, batch_size, **kwargs):
        b = self.cond.shape[0]
        if b != batch_size and b != 1:
            raise DSDBatchError(
                f"DSD: {b} reference canvases but the latent batch is {batch_size}. Use one reference per latent "
                "(same batch size) or a single reference for the whole batch."
            )
        return self._copy_with(comfy.utils.repeat_to_batch_size(self.cond, batch_size))


def flux_params(model_patcher) -> object:
    """The FLUX.1 params of a MODEL, or a clear error; reads config only, never weights."""
    base = getattr(model_patcher, "model", None)
    dm = getattr(base, "diffusion_model", None)
    params = getattr(dm, "params", None)
    if not isinstance(base, comfy.model_base.Flux) or not isinstance(dm, comfy.ldm.flux.model.Flux) or params is None:
        kind = type(base).__name__ if base is not None else type(model_patcher).__name__
        raise DSDModelMismatchError(
            f"DSD needs a FLUX.1 model (dev/schnell architecture), but the MODEL input is {kind}. "
            "Load FLUX.1-dev (Load Diffusion Model / UNETLoader, or a FLUX GGUF) and connect it to DSD Adapter Loader."
        )
    if params.in_channels != FLUX_LATENT_CHANNELS or dm.patch_size != PATCH:
        raise DSDModelMismatchError(
            f"DSD needs FLUX.1 with a 16-channel latent and 2x2 patches; this FLUX has in_channels={params.in_channels}, "
            f"patch_size={dm.patch_size} (FLUX Fill/Depth/Kontext-style or FLUX.2 models are not supported). Use FLUX.1-dev."
        )
    return params


class ConditionEmbedder(torch.nn.Module):
    """``Linear(64, hidden)`` in fp32; copied to the compute device once and cached there."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight.detach().to(torch.float32).clone(), requires_grad=False)
        b = bias if bias is not None else torch.zeros(weight.shape[0])
        self.bias = torch.nn.Parameter(b.detach().to(torch.float32).clone(), requires_grad=False)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        dev = tokens.device
        if dev not in self._on_device:
            self._on_device[dev] = (self.weight.to(dev), self.bias.to(dev))
        w, b = self._on_device[dev]
        return F.linear(tokens.to(torch.float32), w, b)


class DSDPostInput:
    """The ``post_input`` patch; :meth:`bind` gives a per-call copy carrying that batch's tokens.
    ``trained_references``: the reference counts k the adapter was trained with (its metadata)."""

    def __init__(self, embedder: ConditionEmbedder, tokens: torch.Tensor | None = None,
                 trained_references: tuple[int, ...] = (1,)) -> None:  # fmt: skip
        self.embedder = embedder
        self.tokens = tokens
        self.trained_references = tuple(trained_references)

    def bind(self, tokens: torch.Tensor | None) -> DSDPostInput:
        return DSDPostInput(self.embedder, tokens, self.trained_references)

    def to(self, device):  # ModelPatcher may move patches with the model
        return self

    def __call__(self, args: dict) -> dict:
        tokens = self.tokens
        if tokens is None:
            return args
        img = args["img"]
        b, n = tokens.shape[:2]
        if b != img.shape[0] or n > img.shape[1]:
            raise DSDNodeError(
                f"DSD condition tokens {tuple(tokens.shape)} do not fit the image tokens {tuple(img.shape[:2])}: the latent "
                "must be the canvas latent from DSD Reference Conditioning (same width/height and batch)."
            )
        add = self.embedder(tokens.to(img.device)).to(img.dtype)
        # Extra tokens past the canvas (reference latents) get nothing: DSD conditions only the canvas.
        img = img + add if n == img.shape[1] else torch.cat([img[:, :n] + add, img[:, n:]], dim=1)
        return {**args, "img": img}


def dsd_diffusion_wrapper(executor, x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs):
    """DIFFUSION_MODEL wrapper: hand this batch's condition tokens to the DSD post_input patch."""
    tokens = kwargs.pop(MODEL_COND_KEY, None)
    patches = transformer_options.get("patches", {})
    post = patches.get("post_input", [])
    if any(isinstance(p, DSDPostInput) for p in post):
        if tokens is not None:
            h, w = x.shape[-2] // PATCH, x.shape[-1] // PATCH
            if tokens.shape[1] != h * w:
                raise DSDNodeError(
                    f"DSD condition tokens are for {tokens.shape[1]} image tokens but the latent {tuple(x.shape[-2:])} has "
                    f"{h * w}: sample the LATENT that DSD Reference Conditioning outputs (same width and height)."
                )
        else:
            _warn_no_tokens()
        bound = [p.bind(tokens) if isinstance(p, DSDPostInput) else p for p in post]
        transformer_options = {**transformer_options, "patches": {**patches, "post_input": bound}}
    return executor(x, timestep, context, y, guidance, ref_latents, control, transformer_options, **kwargs)


_warned = False


def _warn_no_tokens() -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning(
            "DSD model sampled with conditioning that carries no reference: connect DSD Reference Conditioning "
            "to the sampler's positive/negative (running as plain FLUX + LoRA)."
        )


def apply_condition_embedder(model_patcher, weight: torch.Tensor, bias: torch.Tensor | None,
                             trained_references: tuple[int, ...] = (1,)):  # fmt: skip
    """Clone ``model_patcher`` with the DSD embedder patch and wrapper; the base weights are not touched."""
    params = flux_params(model_patcher)
    if tuple(weight.shape) != (params.hidden_size, FLUX_PACKED_CHANNELS):
        raise DSDModelMismatchError(
            f"the DSD condition embedder is Linear({weight.shape[1]}, {weight.shape[0]}) but this FLUX needs "
            f"Linear({FLUX_PACKED_CHANNELS}, {params.hidden_size}): the DSD weights were made for a different FLUX size "
            "(DSD's release is for FLUX.1-dev, hidden size 3072)."
        )
    m = model_patcher.clone()
    m.set_model_post_input_patch(DSDPostInput(ConditionEmbedder(weight, bias), trained_references=trained_references))
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, dsd_diffusion_wrapper)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, dsd_outer_sample_wrapper)
    return m


def dsd_outer_sample_wrapper(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper, run once per sampling run by any guider (KSampler, SamplerCustom...): warn when the
    conditioning carries more references than the adapter was trained with. A guider that warns by itself when it
    is made (DSD Guider, which also shows it on the node) sets ``warns_references`` and is left alone."""
    guider = executor.class_obj
    if not getattr(guider, "warns_references", False):
        conds = [c for group in getattr(guider, "conds", {}).values() for c in group or ()]
        count = max((getattr(c.get("model_conds", {}).get(MODEL_COND_KEY), "references", 0) for c in conds), default=0)
        check_reference_count(count, list(trained_references(guider.model_patcher)), "the DSD adapter")
    return executor(*args, **kwargs)


def _dsd_patches(model_patcher) -> list[DSDPostInput]:
    post = model_patcher.model_options.get("transformer_options", {}).get("patches", {}).get("post_input", [])
    return [p for p in post if isinstance(p, DSDPostInput)]


def has_dsd(model_patcher) -> bool:
    return bool(_dsd_patches(model_patcher))


def trained_references(model_patcher) -> tuple[int, ...]:
    """The reference counts k the model's DSD adapter was trained with ((1,) for today's adapters)."""
    patches = _dsd_patches(model_patcher)
    return patches[-1].trained_references if patches else (1,)


def reference_count(conditioning: list) -> int:
    """The most reference frames any entry of ``conditioning`` carries (0: no DSD tokens)."""
    counts = [d.get("model_conds", {}).get(MODEL_COND_KEY) for _, d in conditioning]
    return max((getattr(c, "references", 1) for c in counts if c is not None), default=0)


def with_condition_tokens(conditioning: list, tokens: torch.Tensor, references: int = 1) -> list:
    """Conditioning with DSD tokens (from a canvas of ``references`` reference frames) in ``model_conds``."""
    out = []
    for t, d in conditioning:
        d = d.copy()
        mc = dict(d.get("model_conds", {}))
        mc[MODEL_COND_KEY] = DSDTokens(tokens, references)
        d["model_conds"] = mc
        out.append([t, d])
    return out


def with_zero_tokens(conditioning: list) -> list:
    """The image-unconditional branch: the same tokens' shape, exactly zero; with k references every reference
    frame is dropped together (true CFG guides by all references at once)."""
    out = []
    for t, d in conditioning:
        mc = d.get("model_conds", {})
        if MODEL_COND_KEY not in mc:
            raise DSDNodeError(
                "DSD Guider: the negative conditioning carries no reference; connect it through DSD Reference Conditioning."
            )
        d = d.copy()
        mc = dict(mc)
        tokens = mc[MODEL_COND_KEY]
        mc[MODEL_COND_KEY] = DSDTokens(torch.zeros_like(tokens.cond), getattr(tokens, "references", 1))
        d["model_conds"] = mc
        out.append([t, d])
    return out
