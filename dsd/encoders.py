"""The frozen FLUX encoders (VAE + CLIP/T5) of a diffusers FLUX folder: one implementation for the
standalone sampler, training caches, on-the-fly encoding and validation sampling.

Text encoding reuses diffusers' ``FluxPipeline.encode_prompt`` (CLIP pooled + T5 sequence, as the
authors' pipeline). Canvases are VAE-encoded with the posterior MEAN (deterministic; the authors
sample, which differs negligibly) and shifted/scaled into diffusion-model space.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .tokens import latent_to_model, model_to_latent
from .weights.errors import WeightsError

logger = logging.getLogger(__name__)
DEFAULT_SEQUENCE_LENGTH = 512  # FLUX.1-dev's T5 length, what the authors sample with


def trained_sequence_length(adapter: str | os.PathLike[str] | None) -> int | None:
    """The T5 length a DSD adapter was trained with (``model.max_sequence_length`` in the
    ``dsd_train_config`` metadata training writes), or None when the file does not say."""
    if adapter is None:
        return None
    from .weights.safetensors_io import read_metadata

    try:
        config = json.loads(read_metadata(adapter).get("dsd_train_config", "{}"))
        return int(config["model"]["max_sequence_length"])
    except (ValueError, KeyError, TypeError, OSError):
        return None


def sampling_sequence_length(requested: int | None, adapter: str | os.PathLike[str] | None = None) -> int:
    """The T5 length to sample with: ``requested``, else the adapter's training length, else 512.
    Sampling with another length than training changes the text tokens the model sees: warn."""
    trained = trained_sequence_length(adapter)
    length = requested or trained or DEFAULT_SEQUENCE_LENGTH
    if trained is not None and length != trained:
        logger.warning("%s was trained with max_sequence_length %d; sampling with %d does not match training",
                       adapter, trained, length)  # fmt: skip
    return length


class FluxEncoders:
    def __init__(self, pipe: Any, max_sequence_length: int = 512) -> None:
        """``pipe``: a diffusers ``FluxPipeline`` (its transformer may be None)."""
        self.pipe = pipe
        self.max_sequence_length = max_sequence_length

    @classmethod
    def from_local(
        cls,
        flux_dir: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_sequence_length: int = 512,
        with_transformer: bool = False,
    ) -> FluxEncoders:
        from diffusers import FluxPipeline

        flux_dir = Path(flux_dir) if flux_dir else Path("<unset>")
        if not (flux_dir / "model_index.json").is_file():
            raise WeightsError(
                f"{flux_dir}: not a diffusers FLUX pipeline folder (no model_index.json). Download FLUX.1-dev in diffusers "
                "layout (vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, transformer/) and point to it."
            )
        extra = {} if with_transformer else {"transformer": None}
        pipe = FluxPipeline.from_pretrained(flux_dir, dtype=dtype, local_files_only=True, **extra)
        pipe.to(device)
        return cls(pipe, max_sequence_length)

    @property
    def vae(self) -> Any:
        return self.pipe.vae

    @property
    def device(self) -> torch.device:
        return self.pipe.vae.device

    @torch.no_grad()
    def encode_prompt(self, prompt: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (T5 sequence ``[B, L, D]``, CLIP pooled ``[B, P]``) in fp32."""
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=prompt, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return embeds.float(), pooled.float()

    @torch.no_grad()
    def encode_canvas(self, canvas: torch.Tensor) -> torch.Tensor:
        """Canvas ``[B, 3, H, W]`` in [-1, 1] -> model-space latent ``[B, 16, H/8, W/8]`` (posterior mean)."""
        vae = self.vae
        z = vae.encode(canvas.to(device=vae.device, dtype=vae.dtype)).latent_dist.mean
        return latent_to_model(z.float(), vae.config.shift_factor, vae.config.scaling_factor)

    @torch.no_grad()
    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Model-space latent -> image in [-1, 1]."""
        vae = self.vae
        z = model_to_latent(latent.float(), vae.config.shift_factor, vae.config.scaling_factor)
        return vae.decode(z.to(device=vae.device, dtype=vae.dtype)).sample.float()
