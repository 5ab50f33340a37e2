"""``python -m training {cache,train,export,estimate} --config FILE [--set section.key=value ...]``."""

import sys

from .cli import main

sys.exit(main())
