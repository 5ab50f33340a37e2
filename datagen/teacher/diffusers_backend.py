"""Teacher backend: a local diffusers FluxPipeline folder (FLUX.1-dev or any FLUX pipeline).

Loads offline only (``local_files_only=True``): datagen never downloads weights behind the
user's back. One ``torch.Generator`` per image, so an image depends on its own seed only, not on
which other prompts share its batch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

from .config import TeacherConfig

logger = logging.getLogger(__name__)


class TeacherModelError(RuntimeError):
    """The teacher model folder is missing or cannot be loaded."""


def _torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def pick_device(device: str, local_rank: int = 0) -> str:
    """``auto``: this process's GPU (LOCAL_RANK) when CUDA is present, else CPU."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return "cpu"


class DiffusersTeacher:
    name = "diffusers"

    def __init__(self, cfg: TeacherConfig, local_rank: int = 0) -> None:
        if not cfg.model_dir:
            raise TeacherModelError(
                "teacher.model_dir is not set: point it at a local FluxPipeline folder "
                "(e.g. a snapshot of black-forest-labs/FLUX.1-dev with model_index.json)"
            )
        model_dir = Path(cfg.model_dir).expanduser()
        if not (model_dir / "model_index.json").is_file():
            raise TeacherModelError(
                f"{model_dir} is not a diffusers pipeline folder (no model_index.json); "
                "set teacher.model_dir to the folder that holds model_index.json"
            )
        from diffusers import FluxPipeline

        self.cfg = cfg
        self.device = pick_device(cfg.device, local_rank)
        try:
            self.pipe = FluxPipeline.from_pretrained(
                str(model_dir), torch_dtype=_torch_dtype(cfg.dtype), local_files_only=True
            )
        except (OSError, ValueError, KeyError) as exc:
            raise TeacherModelError(f"cannot load a FluxPipeline from {model_dir}: {exc}") from exc
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        logger.info("teacher: FluxPipeline from %s on %s (%s)", model_dir, self.device, cfg.dtype)

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        import torch

        gen_device = "cpu" if self.device.startswith("mps") else self.device
        generators = [torch.Generator(device=gen_device).manual_seed(int(s)) for s in seeds]
        with torch.inference_mode():
            out = self.pipe(
                prompt=list(prompts),
                height=self.cfg.height,
                width=self.cfg.width,
                num_inference_steps=self.cfg.steps,
                guidance_scale=self.cfg.guidance,
                generator=generators,
                max_sequence_length=self.cfg.max_sequence_length,
                output_type="pil",
            )
        return list(out.images)

    def close(self) -> None:
        self.pipe = None
