"""The one command-line layer of ``python -m dsd``, ``python -m datagen``, ``python -m datagen.teacher``
and ``python -m training``: the same flags, logging, config parsing and exit codes everywhere.

Flags (every command):
    (none)     warnings only; progress bars and the closing summary; no per-request lines
    -v         our INFO lines too (third-party INFO, e.g. one line per HTTP request, stays off)
    -vv        DEBUG: ours at DEBUG, third-party libraries at INFO
    -q         errors only, no progress bars (results still print on stdout)
    --no-progress   no progress bars

Config (commands that take one): ``--config FILE.toml`` and repeatable ``--set SECTION.KEY=VALUE``
(TOML values, bare strings allowed). Paths inside a config file are relative to that file; paths on
the command line (``--set``, generated ``--field`` flags) are relative to the current directory,
like every other path you type (see ``dsd.config.load_config_file``).

Exit codes: 0 done; 2 bad input or config (the message says what and how to fix it); 1 an expected
failure of something outside (a provider, a model server, a model load); 130 interrupted (rerun the
same command to resume). Anything else is a bug and ends with its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import cli_output

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

OUR_LOGGERS = ("dsd", "datagen", "training", "__main__")
# Libraries that log a line per request (HTTP clients, SDKs) or chat about weights at INFO.
THIRD_PARTY = ("httpx", "httpx2", "httpcore", "openai", "google_genai", "urllib3", "diffusers", "transformers",
               "accelerate", "huggingface_hub", "PIL")  # fmt: skip


def add_common_flags(parser: argparse.ArgumentParser, *, subcommand: bool = False) -> None:
    """``-v/-vv``, ``-q``, ``--no-progress``. On a subcommand's parser the defaults are left out so
    ``prog -v sub`` and ``prog sub -v`` both work (argparse would overwrite the first with the default)."""
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if subcommand else value

    parser.add_argument("-v", "--verbose", action="count", default=default(0),
                        help="-v: our INFO logs; -vv: DEBUG, third-party INFO too")  # fmt: skip
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False), help="errors only, no progress bars")
    parser.add_argument("--no-progress", action="store_true", default=default(False), help="no progress bars")


def common_parent() -> argparse.ArgumentParser:
    """A ``parents=[...]`` parser carrying the common flags, for subcommands."""
    parent = argparse.ArgumentParser(add_help=False)
    add_common_flags(parent, subcommand=True)
    return parent


def progress_enabled(args: argparse.Namespace) -> bool:
    return not (getattr(args, "no_progress", False) or getattr(args, "quiet", False))


def configure_logging(args: argparse.Namespace) -> None:
    verbose, quiet = int(getattr(args, "verbose", 0) or 0), bool(getattr(args, "quiet", False))
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if verbose < 2:
        # Whatever a library's logger is called (the OpenAI SDK logs through httpx2, older ones
        # through httpx), its INFO never reaches the terminal below -vv.
        handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.name.split(".")[0] in OUR_LOGGERS)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    third_party = logging.ERROR if quiet else (logging.INFO if verbose >= 2 else logging.WARNING)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(third_party)


def add_config_flags(parser: argparse.ArgumentParser, *, required: bool = False, what: str = "TOML config") -> None:
    parser.add_argument("--config", type=Path, required=required, help=f"{what}; relative paths in it resolve against its folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (TOML syntax, bare strings allowed), repeatable; "
                             "paths relative to the current directory")  # fmt: skip


_SIMPLE = (str, int, float, bool, Path)


def _flag_type(tp: Any) -> tuple[Any, tuple[Any, ...] | None] | None:
    """(argparse type, choices) for a simple field type, or None when a flag makes no sense."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _flag_type(inner[0]) if len(inner) == 1 else None
    if typing.get_origin(tp) is typing.Literal:
        return type(args[0]), args
    return (tp, None) if tp in _SIMPLE else None


def add_field_flags(parser: argparse.ArgumentParser, cls: type, *, section: str) -> list[str]:
    """One ``--field-name`` flag per simple field of dataclass ``cls`` (strings, numbers, booleans,
    literals, optional ones), so a new config field gets its flag without touching the CLI.
    The values become ``SECTION.FIELD`` overrides (see :func:`field_overrides`)."""
    hints = typing.get_type_hints(cls)
    names = []
    for f in dataclasses.fields(cls):
        kind = _flag_type(hints[f.name])
        if kind is None or not f.init:
            continue
        tp, choices = kind
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{section}.{f.name} (default {default!r})"
        if tp is bool:
            parser.add_argument(flag, dest=f"field:{f.name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f"field:{f.name}", type=tp, choices=choices, default=None, help=help_text,
                                metavar=None if choices else f.name.upper())
        names.append(f.name)
    return names


def field_overrides(args: argparse.Namespace, cls: type, *, section: str) -> dict[str, Any]:
    """The ``--field`` flags given on the command line, as ``{"SECTION.FIELD": value}``."""
    prefix = f"{section}." if section else ""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f"field:{f.name}", None)
        if value is not None:
            out[prefix + f.name] = str(value) if isinstance(value, Path) else value
    return out


def run_cli(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    user_errors: tuple[type[BaseException], ...],
    failures: tuple[type[BaseException], ...] = (),
) -> int:
    """Parse, configure logging, run ``args.func(args)`` and map its outcome to an exit code.

    ``user_errors`` (bad input or config: our own error types, never a bare ``ValueError``) exit 2,
    ``failures`` (a provider, server or model that let us down) exit 1, both with ``error: ...`` on
    stderr; Ctrl-C exits 130. Any other exception is a bug and propagates with its traceback."""
    args = parser.parse_args(argv)
    configure_logging(args)
    try:
        return int(args.func(args) or 0)
    except user_errors as exc:
        logger.debug("bad input", exc_info=True)
        cli_output.error(str(exc))
        return EXIT_USAGE
    except failures as exc:
        logger.debug("failed", exc_info=True)
        cli_output.error(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        cli_output.error("interrupted; rerun the same command to resume")
        return EXIT_INTERRUPTED
