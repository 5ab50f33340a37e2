"""DSD Guider: DSD's two-scale true CFG on ComfyUI's sampler (SamplerCustomAdvanced).

Branches (docs/method.md §2), all through ``comfy.samplers.calc_cond_batch`` in ONE batched call:
``e_full`` = positive + reference, ``e_t0`` = negative + reference, ``e_00`` = negative + zero tokens;
``e = e_00 + s_i (e_t0 - e_00) + s_t (e_full - e_t0)``. As the authors, true CFG runs only when
``s_i > 1`` and from step ``cfg_start_step`` on; otherwise one pass (``e_full``).

The combination goes through ``comfy.samplers.cfg_function`` the way ComfyUI's own
``Guider_DualCFG`` (non-nested) does, ``cfg_function(e_t0 vs e_00, s_i) + (e_full - e_t0) s_t``, so
``sampler_cfg_function`` / ``sampler_post_cfg_function`` patches (RescaleCFG, other packs) apply, and
``sampler_pre_cfg_function`` patches (APG, TCFG, FreSca) on the image-guidance pair as
``comfy.samplers.sampling_function`` calls them (core's DualCFGGuider skips them); with no patch it is
the formula above, operation for operation (``dsd.sampler.combine_cfg``). One-pass steps go through
``cfg_function`` as ComfyUI's CFGGuider does at cfg 1 (no uncond), without pre-CFG patches (nothing to
guide). The combination is linear with weights summing to one, so applying it to ComfyUI's denoised predictions equals applying it to FLUX's
velocities.
"""

from __future__ import annotations

import logging

import comfy.patcher_extension
import comfy.samplers
import node_helpers
import torch
from comfy_api.latest import io, ui

from ..dsd.sampler import GuidanceConfig
from ..dsd.weights.adapter import check_reference_count
from .errors import DSDNodeError, require_finite
from .patch import has_dsd, reference_count, trained_references, with_zero_tokens

logger = logging.getLogger(__name__)


def step_index(timestep: torch.Tensor, model_options: dict) -> int | None:
    sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
    if sigmas is None:
        return None
    t = float(timestep.reshape(-1)[0])
    return int(torch.argmin((sigmas.to(torch.float64).cpu() - t).abs()))


def reference_warning(model, positive) -> str | None:
    """A warning (logged, and shown as the node's text) when the conditioning carries more references than the
    model's DSD adapter was trained with; None when it fits. Never an error: an adapter trained with one
    reference still sees every frame, it only has not learned to combine them."""
    message = check_reference_count(reference_count(positive), list(trained_references(model)), "the DSD adapter")
    return f"DSD Guider: {message}" if message else None


def has_easycache(model) -> bool:
    """EasyCache (core) registers its per-branch cache as the DIFFUSION_MODEL wrapper keyed "easycache"."""
    return bool(model.wrappers.get(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, {}).get("easycache"))


class GuiderDSD(comfy.samplers.CFGGuider):
    warns_references = True  # DSD Guider warns when it is made (log + node text); the sampling wrapper does not repeat it

    def set_guidance(self, config: GuidanceConfig) -> None:
        self.config = config

    def set_conds(self, positive, negative):
        middle = node_helpers.conditioning_set_values(negative, {"prompt_type": "negative"})
        self.inner_set_conds({"positive": positive, "middle": middle, "negative": with_zero_tokens(negative)})

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        model_options = model_options if model_options is not None else {}
        positive = self.conds.get("positive")
        step = step_index(timestep, model_options)
        if not self.config.true_cfg or (step is not None and step < self.config.cfg_start_step):
            # one pass, as ComfyUI's CFGGuider at cfg 1 (a None cond costs no model call) but without pre-CFG patches:
            # they would take calc_cond_batch's zeros for an uncond (APG then doubles the prediction)
            e_full, none = comfy.samplers.calc_cond_batch(self.inner_model, [positive, None], x, timestep, model_options)
            return comfy.samplers.cfg_function(
                self.inner_model, e_full, none, 1.0, x, timestep, model_options=model_options, cond=positive, uncond=None
            )
        middle, negative = self.conds.get("middle"), self.conds.get("negative")
        e_full, e_t0, e_00 = self.calc_conds([positive, middle, negative], x, timestep, model_options)
        # pre-CFG patches (APG, TCFG, FreSca) act on the pair that goes through cfg_function, the image guidance,
        # in the host's [cond, uncond, *rest] order; the text term keeps the model's own e_t0 (APG rewrites cond
        # only to steer cfg_function's result)
        cond_t0, cond_00, e_full = self.pre_cfg([middle, negative, positive], [e_t0, e_00, e_full], x, timestep, model_options)
        image_cfg = comfy.samplers.cfg_function(
            self.inner_model, cond_t0, cond_00, self.config.image_guidance, x, timestep, model_options=model_options,
            cond=middle, uncond=negative,
        )  # fmt: skip
        return image_cfg + (e_full - e_t0) * self.config.text_guidance

    def calc_conds(self, conds, x, timestep, model_options):
        """All branches in one batched call; a ``sampler_calc_cond_batch_function`` (SkipLayerGuidanceDiTSimple) gets
        the image-guidance pair as its [cond, uncond], the only shape it knows, and the positive runs on its own."""
        if "sampler_calc_cond_batch_function" not in model_options:
            return comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
        positive, middle, negative = conds
        args = {"conds": [middle, negative], "input": x, "sigma": timestep, "model": self.inner_model,
                "model_options": model_options}  # fmt: skip
        e_t0, e_00 = model_options["sampler_calc_cond_batch_function"](args)
        (e_full,) = comfy.samplers.calc_cond_batch(self.inner_model, [positive], x, timestep, model_options)
        return e_full, e_t0, e_00

    def pre_cfg(self, conds, out, x, timestep, model_options):
        """``sampler_pre_cfg_function`` patches, called as comfy.samplers.sampling_function calls them."""
        for fn in model_options.get("sampler_pre_cfg_function", []):
            args = {"conds": conds, "conds_out": out, "cond_scale": self.config.image_guidance, "timestep": timestep,
                    "input": x, "sigma": timestep, "model": self.inner_model, "model_options": model_options}  # fmt: skip
            out = fn(args)
        return out


class DSDGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DSDGuider",
            display_name="DSD Guider",
            category="DSD/sampling",
            description="DSD's two-scale true CFG (image and text guidance) for SamplerCustomAdvanced. With both scales at 1 "
            "each step is a single pass (plain DSD, like KSampler with cfg 1).",
            inputs=[
                io.Model.Input("model", tooltip="The model from DSD Adapter Loader."),
                io.Conditioning.Input("positive", tooltip="Positive from DSD Reference Conditioning."),
                io.Conditioning.Input("negative", tooltip="Negative from DSD Reference Conditioning."),
                io.Float.Input("image_guidance", default=1.0, min=0.0, max=30.0, step=0.05, round=0.01,
                               tooltip="s_i: how strongly the reference is followed. True CFG (3 branches) runs only above 1."),
                io.Float.Input("text_guidance", default=1.0, min=0.0, max=30.0, step=0.05, round=0.01,
                               tooltip="s_t: prompt vs negative prompt, used when image_guidance > 1."),
                io.Int.Input("cfg_start_step", default=2, min=0, max=10000,
                             tooltip="Steps before this one use the positive branch alone (authors: 2, i.e. CFG from the third step)."),
            ],  # fmt: skip
            outputs=[io.Guider.Output(tooltip="Guider for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, image_guidance, text_guidance, cfg_start_step) -> io.NodeOutput:
        # NaN would read as "image_guidance <= 1" and silently turn true CFG off
        require_finite("DSD Guider", image_guidance=image_guidance, text_guidance=text_guidance,
                       cfg_start_step=cfg_start_step)  # fmt: skip
        if not has_dsd(model):
            raise DSDNodeError("DSD Guider: the model has no DSD adapter; pass it through DSD Adapter Loader first.")
        config = GuidanceConfig(image_guidance=image_guidance, text_guidance=text_guidance, cfg_start_step=cfg_start_step)
        if config.true_cfg and cfg_start_step > 0 and has_easycache(model):
            raise DSDNodeError(
                "DSD Guider: EasyCache cannot serve the step where DSD's true CFG starts (its two new branches have no "
                "cached output yet; ComfyUI stops with a KeyError). Set cfg_start_step to 0, or use LazyCache, which "
                "caches the guider's combined prediction."
            )
        if text_guidance != 1.0 and not config.true_cfg:
            logger.warning("DSD Guider: text_guidance=%s has no effect with image_guidance <= 1: DSD's true CFG runs "
                           "only when image_guidance > 1 (as in the authors' code)", text_guidance)  # fmt: skip
        warning = reference_warning(model, positive)
        guider = GuiderDSD(model)
        guider.set_guidance(config)
        guider.set_conds(positive, negative)
        guider.set_cfg(1.0)
        return io.NodeOutput(guider, ui=ui.PreviewText(warning) if warning else None)
