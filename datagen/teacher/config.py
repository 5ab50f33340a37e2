"""Typed settings of the teacher stage: the ``[teacher]`` table of a datagen config file (also what
``python -m datagen.teacher --config`` reads; its flags are generated from these fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dsd.config import ConfigError, path_field

_DTYPES = ("bfloat16", "float16", "float32")


TOY_JITTER = 0.03  # backend "toy": the teacher's default placement jitter (``TeacherConfig.toy_jitter``)
TOY_WHOLE_SHARE = 0.5  # backend "toy", views "sides": the share of panels shown whole (``TeacherConfig.toy_whole_share``)


@dataclass(frozen=True, slots=True)
class TeacherConfig:
    """How the frozen FLUX teacher draws the grids.

    ``backend="diffusers"`` loads a local FluxPipeline folder (``model_dir``, offline only);
    ``backend="comfyui"`` sends API-format workflows to a running ComfyUI at ``comfyui_url``.
    ``comfyui_workflow`` is a path to a user workflow with ``{{...}}`` markers (see
    datagen/teacher/comfyui_backend.py); without it the shipped template is used, filled with the
    ``comfyui_*`` model file names (``comfyui_checkpoint`` switches to CheckpointLoaderSimple).
    """

    backend: Literal["diffusers", "comfyui", "toy"] = "diffusers"  # toy: procedural grids (datagen/teacher/toy.py)
    model_dir: str | None = path_field(None)
    comfyui_url: str = "http://127.0.0.1:8188"
    comfyui_workflow: str | None = path_field(None)
    width: int = 1024
    height: int = 1024
    steps: int = 28
    guidance: float = 3.5
    batch_size: int = 1
    seeds_per_prompt: int = 1
    base_seed: int = 0
    dtype: str = "bfloat16"
    device: str = "auto"
    timeout_s: float = 600.0
    # Model file names for the shipped ComfyUI template (names as ComfyUI lists them in its folders).
    comfyui_unet: str = "flux1-dev.safetensors"
    comfyui_weight_dtype: str = "default"
    comfyui_clip_l: str = "clip_l.safetensors"
    comfyui_t5: str = "t5xxl_fp16.safetensors"
    comfyui_vae: str = "ae.safetensors"
    comfyui_checkpoint: str | None = None
    comfyui_sampler: str = "euler"
    comfyui_scheduler: str = "simple"
    max_sequence_length: int = 512
    # backend "toy" only: "panel" places the object as each panel line's pose asks; "grid" keeps the first
    # panel's placement on every panel (only the background changes), the toy's easy mode (README, issue 19).
    toy_placement: Literal["panel", "grid"] = "panel"
    # backend "toy" only: "sides" shows each panel whole (half of them) or one of its two sides (issue 20's
    # multi-reference proof: one side carries half the identity); "whole" every panel whole.
    toy_views: Literal["whole", "sides"] = "whole"
    # backend "toy" only: each panel's object moves by up to this share of the panel side (uniform, per axis and
    # panel), so no two panels of a grid line up to the pixel (README, issue 19: what the copy costs).
    toy_jitter: float = TOY_JITTER
    # backend "toy", toy_views "sides" only: the share of panels drawn whole, the rest split evenly between the two
    # sides. Fewer whole panels give more tuples whose references are all sides (what the multi-reference eval
    # asks a model to combine) and fewer whole targets.
    toy_whole_share: float = TOY_WHOLE_SHARE

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ConfigError(f"teacher.dtype: {self.dtype!r} is not one of {', '.join(_DTYPES)}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 16 or value % 16:
                raise ConfigError(f"teacher.{name}: {value} must be a positive multiple of 16 (FLUX packs 2x2 latents)")
        for name in ("steps", "batch_size", "seeds_per_prompt", "max_sequence_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"teacher.{name}: must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.toy_jitter <= 0.1:
            raise ConfigError(f"teacher.toy_jitter: {self.toy_jitter} must be in [0, 0.1] (a share of the panel side)")
        if not 0.0 <= self.toy_whole_share <= 1.0:
            raise ConfigError(f"teacher.toy_whole_share: {self.toy_whole_share} must be in [0, 1] (a share of the panels)")
        if self.timeout_s <= 0:
            raise ConfigError(f"teacher.timeout_s: must be positive, got {self.timeout_s}")
        if not self.comfyui_url.startswith(("http://", "https://")):
            raise ConfigError(f"teacher.comfyui_url: {self.comfyui_url!r} must start with http:// or https://")
