"""Errors the DSD nodes raise: ComfyUI shows the message in the node's error panel, so each says what to do.

Two rules every node follows through the helpers here:
- :func:`require_finite`: numbers and tensors are finite. JSON ``NaN``/``Infinity`` in a prompt pass
  ComfyUI's min/max checks (every comparison with NaN is false), and a NaN image from an upstream node
  would otherwise end as a "successful" black picture.
- :func:`public_path` / :func:`public_text`: messages name files the way the user sees them
  (``models/dsd/...``), never by the server's absolute path, which every client of the server can read.
"""

from __future__ import annotations

import math
import os
import re
from numbers import Number

import torch


class DSDNodeError(ValueError):
    """A DSD node got inputs it cannot use (wrong model, wrong file, mismatched batch, ...)."""


class DSDAdapterError(DSDNodeError):
    """The file chosen in DSD Adapter Loader is not usable DSD weights for this model."""


class DSDModelMismatchError(DSDNodeError):
    """The MODEL is not a FLUX.1 model the DSD weights fit."""


class DSDBatchError(DSDNodeError):
    """Reference batch and latent batch do not fit together."""


class DSDInputError(DSDNodeError):
    """An input value the node cannot use: NaN/inf, out of bounds, or a malformed DSD_LAYOUT."""


def _not_finite(name: str, value: object) -> str | None:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                return f"{name} holds {bad} NaN or infinite value(s) of {value.numel()}"
        return None
    if isinstance(value, Number) and not isinstance(value, bool) and not math.isfinite(value):
        return f"{name} is {value!r}"
    return None


def require_finite(node: str, **inputs: object) -> None:
    """Raise :class:`DSDInputError` naming ``node`` and each input (number or tensor) that is NaN or infinite."""
    problems = [p for name, value in inputs.items() if value is not None and (p := _not_finite(name, value))]
    if problems:
        raise DSDInputError(
            f"{node}: {'; '.join(problems)}. Inputs must be finite numbers; a NaN/inf image comes from the node "
            "upstream (e.g. an image blend with a NaN factor), a NaN/inf number from the prompt's JSON."
        )


def _public_roots() -> list[tuple[str, str]]:
    """``(absolute folder, name shown)`` pairs, longest folder first so the most specific one wins."""
    import folder_paths

    base = os.path.normpath(os.path.abspath(folder_paths.base_path))
    roots = {base: ""}
    for kind, (folders, _exts) in folder_paths.folder_names_and_paths.items():
        for folder in map(os.path.normpath, map(os.path.abspath, folders)):
            # inside the ComfyUI folder the path itself is what the user knows; elsewhere
            # (extra_model_paths.yaml) the folder kind is, as the node's file list shows it
            if not folder.startswith(base + os.sep):
                roots[folder] = f"models/{kind}"
    return sorted(roots.items(), key=lambda item: -len(item[0]))


def public_path(path: str | os.PathLike[str]) -> str:
    """A file as the user knows it: relative to the ComfyUI folder (``models/dsd/x.safetensors``), else its name."""
    full = os.path.normpath(os.path.abspath(path))
    for root, shown in _public_roots():
        if full == root or full.startswith(root + os.sep):
            rel = os.path.relpath(full, root)
            return (rel if not shown else shown if rel == "." else f"{shown}/{rel}").replace(os.sep, "/")
    return os.path.basename(full)


def public_text(text: str) -> str:
    """``text`` with every path under a ComfyUI folder rewritten by :func:`public_path`'s rule."""
    for root, shown in _public_roots():
        text = text.replace(root + os.sep, f"{shown}/" if shown else "")
        text = re.sub(re.escape(root) + r"(?![\w.-])", shown or ".", text)  # the folder itself, not /x/models2
    return text
