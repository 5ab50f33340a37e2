"""The standalone DSD pipeline: local FLUX parts + DSD weights -> reference-conditioned images.

Text encoding reuses diffusers' ``FluxPipeline.encode_prompt`` (CLIP pooled + T5 sequence,
exactly as the authors' pipeline). The canvas is VAE-encoded with the posterior MEAN (the
deterministic choice; the authors sample, which differs negligibly), shifted and scaled
the FLUX way and packed into condition tokens.

Several references of one subject (multi-reference DSD) make a row canvas of k + 1 frames: the
same model, position ids over the whole canvas, condition tokens for frames 1..k, and the
image-unconditioned branch of true CFG zeroes all of them together (docs/method.md).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from .canvas import CanvasLayout, canvas_to_image01, compose_canvas, split_canvas, split_frames
from .encoders import FluxEncoders, sampling_sequence_length
from .model import DSDTransformer
from .sampler import GuidanceConfig, SamplerStats, TextConditioning, make_noise, sample_tokens
from .tokens import image_ids, pack, text_ids, unpack
from .weights.errors import WeightsError

logger = logging.getLogger(__name__)


@dataclass
class GenerateResult:
    canvas: torch.Tensor  # [B, 3, H, W] in [0, 1]
    frame_one: torch.Tensor  # the model's reconstruction of the reference
    frame_two: torch.Tensor  # the result
    tokens: torch.Tensor  # packed final latent tokens (model space)
    stats: SamplerStats
    frames: list[torch.Tensor] = field(default_factory=list)  # every frame: k reconstructions, then the result


def reference_count(reference: Any) -> int:
    """How many references of one subject ``reference`` holds: a list/tuple of k images is k, anything else 1."""
    return len(reference) if isinstance(reference, (list, tuple)) else 1


def layout_for(reference: Any, layout: CanvasLayout) -> CanvasLayout:
    """The layout for ``reference``: a list of k images widens a one-reference layout to k + 1 frames of its frame size."""
    k = reference_count(reference)
    if k == layout.references or layout.references != 1:
        return layout  # a layout that already names k is kept (compose_canvas checks the count)
    return CanvasLayout.from_frame(layout.height, layout.frame_width, references=k, fit=layout.fit, pad_value=layout.pad_value)


class DSDPipeline:
    def __init__(self, model: DSDTransformer, encoders: FluxEncoders, trained_references: list[int] | None = None,
                 source: str = "the DSD weights") -> None:  # fmt: skip
        """``trained_references``: the k the weights were trained with ([1]: the authors' release), None: unknown."""
        self.model = model
        self.encoders = encoders
        self.trained_references = trained_references
        self.source = source

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_local(
        cls,
        flux_dir: str | os.PathLike[str],
        release: str | os.PathLike[str] | None = None,
        adapter: str | os.PathLike[str] | None = None,
        lora_scale: float = 1.0,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        max_sequence_length: int | None = None,
        plain_base: bool = False,
    ) -> DSDPipeline:
        """``flux_dir``: a diffusers FLUX pipeline folder (FLUX.1-dev: vae, text encoders, tokenizers).

        The DSD transformer comes from ``release`` (the authors' published folder) or from
        ``flux_dir/transformer`` + ``adapter`` (a DSD adapter file from ``dsd convert`` or training), or with
        ``plain_base`` is ``flux_dir/transformer`` alone (zero embedder: the no-reference baseline).
        ``max_sequence_length``: T5 tokens; None takes the adapter's training length (else 512).
        """
        from .weights.adapter import load_adapter, trained_references
        from .weights.lora import merge_lora
        from .weights.release import find_release_parts, load_release_lora, load_release_transformer

        if plain_base and (release is not None or adapter is not None):
            raise WeightsError("the plain base (no reference) takes neither a DSD release nor an adapter")
        if not plain_base and (release is None) == (adapter is None):
            raise WeightsError("give exactly one of: the DSD release folder, or a DSD adapter file")
        length = sampling_sequence_length(max_sequence_length, adapter)
        encoders = FluxEncoders.from_local(flux_dir, device=device, dtype=dtype, with_transformer=release is None,
                                           max_sequence_length=length)  # fmt: skip
        trained: list[int] | None = [1]  # the authors' release: one reference
        if plain_base:  # ``flux_dir``'s own transformer with a zero embedder: text only, no reference
            model = DSDTransformer(encoders.pipe.transformer)
            encoders.pipe.transformer = None
            trained = None
        elif release is not None:
            tdir, lora_path = find_release_parts(release)
            if lora_path is None:
                raise WeightsError(f"{release}: no pytorch_lora_weights.safetensors beside the transformer folder")
            model = load_release_transformer(tdir, dtype=dtype, device=device)
            merge_lora(model.transformer, load_release_lora(lora_path), strength=lora_scale, source=lora_path)
        else:
            model = DSDTransformer(encoders.pipe.transformer)
            encoders.pipe.transformer = None  # the pipeline only serves text encoding from here on
            ad = load_adapter(adapter)
            trained = trained_references(ad)
            model.load_c_embedder(ad.c_embedder)
            if ad.lora:
                merge_lora(model.transformer, ad.lora, strength=lora_scale, source=adapter)
        model.to(device)
        return cls(model=model.eval(), encoders=encoders, trained_references=trained, source=str(adapter or release or flux_dir))

    # -- pieces ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    def encode_prompt(self, prompt: str | list[str]) -> TextConditioning:
        return TextConditioning(*self.encoders.encode_prompt(prompt))

    def encode_canvas(self, canvas: torch.Tensor) -> torch.Tensor:
        """Canvas ``[B, 3, H, W]`` in [-1, 1] -> model-space latent ``[B, 16, H/8, W/8]`` (posterior mean)."""
        return self.encoders.encode_canvas(canvas)

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        return self.encoders.decode_latent(latent)

    # -- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        reference: Any,
        prompt: str | list[str],
        negative_prompt: str = "",
        layout: CanvasLayout = CanvasLayout(),
        steps: int = 28,
        guidance: GuidanceConfig = GuidanceConfig(),
        seed: int = 0,
        sigmas: torch.Tensor | None = None,
        progress: bool = True,
    ) -> GenerateResult:
        """``reference``: one image (a batch makes one canvas each), or a list of k images of ONE subject.

        With k references a one-reference ``layout`` is widened to k + 1 frames of its frame size.
        """
        layout = layout_for(reference, layout)
        if layout.references > 1 and self.trained_references is not None:
            from .weights.adapter import check_reference_count

            check_reference_count(layout.references, self.trained_references, self.source)
        canvas = compose_canvas(reference, layout)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        b = max(canvas.shape[0], len(prompts))
        if canvas.shape[0] not in (1, b) or len(prompts) not in (1, b):
            raise ValueError(f"{canvas.shape[0]} references and {len(prompts)} prompts: give one, or the same number of each")
        cond_latent = self.encode_canvas(canvas)
        h, w = cond_latent.shape[-2:]
        cond = pack(cond_latent).expand(b, -1, -1) if cond_latent.shape[0] == 1 else pack(cond_latent)
        text = self.encode_prompt(prompts if len(prompts) == b else prompts * b)
        negative = self.encode_prompt([negative_prompt] * b) if guidance.true_cfg else None
        noise = pack(make_noise(b, h, w, seed))
        stats = SamplerStats()
        tokens = sample_tokens(
            self.model, noise, cond, text, image_ids(h, w), text_ids(text.prompt_embeds.shape[1]),
            sigmas=sigmas, steps=steps, guidance=guidance, negative_text=negative, stats=stats, progress=progress,
        )  # fmt: skip
        image = canvas_to_image01(self.decode_latent(unpack(tokens, h, w)))
        one, two = split_canvas(image, layout)
        frames = split_frames(image, layout.frames) if layout.references > 1 else [one, two]
        return GenerateResult(canvas=image, frame_one=one, frame_two=two, tokens=tokens, stats=stats, frames=frames)
