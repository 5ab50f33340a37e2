"""The teacher stage: FLUX draws the grid images (diffusers or a running ComfyUI), sharded over ranks."""

from .config import TeacherConfig
from .sharding import merge_teacher_logs
from .stage import run_teacher

__all__ = ["TeacherConfig", "merge_teacher_logs", "run_teacher"]
