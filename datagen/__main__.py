"""`python -m datagen ...` (see datagen/cli.py)."""

import sys

from .cli import main

sys.exit(main())
