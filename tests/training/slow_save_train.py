"""The training CLI with a pause inside one checkpoint's temporary folder, for the kill -9 test.

``python tests/training/slow_save_train.py STEP SECONDS <python -m training arguments>``: the save of step
STEP sleeps SECONDS once its files are written and before its folder is renamed into place.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main() -> int:
    step, seconds = int(sys.argv[1]), float(sys.argv[2])
    from training import checkpoint
    from training.cli import main as cli_main

    def pause(saved_step: int, tmp: Path) -> None:
        if saved_step == step:
            time.sleep(seconds)

    checkpoint.BEFORE_COMMIT.append(pause)
    return cli_main(sys.argv[3:])


if __name__ == "__main__":
    sys.exit(main())
