"""The example images the shipped workflows name (``dsd_reference.png``, ``dsd_depth_hint.png``).

A template opened from ComfyUI's templates browser and run unchanged needs its LoadImage files in ComfyUI's
``input/`` folder. At load the pack copies each file of ``example_inputs/`` there when no file of that name
exists (a user's own file is never replaced), logging each copy.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import folder_paths

from ..dsd.io import atomic_path

logger = logging.getLogger(__name__)
EXAMPLES = Path(__file__).resolve().parents[1] / "example_inputs"


def install(input_dir: str | Path | None = None) -> list[Path]:
    """Copies the missing example inputs into ``input_dir`` (ComfyUI's input folder); returns the new files."""
    target = Path(input_dir if input_dir is not None else folder_paths.get_input_directory())
    copied = []
    for example in sorted(EXAMPLES.glob("*.png")):
        dest = target / example.name
        if dest.exists():
            continue
        try:
            target.mkdir(parents=True, exist_ok=True)
            with atomic_path(dest) as tmp:
                shutil.copyfile(example, tmp)
        except OSError as err:  # a read-only input folder must not stop the pack from loading
            logger.warning("DSD: could not copy the example input %s into ComfyUI's input folder: %s", example.name, err)
            continue
        logger.info("DSD: copied the example input %s into ComfyUI's input folder (the shipped workflows use it)", example.name)
        copied.append(dest)
    return copied
