"""Errors the DSD nodes raise: ComfyUI shows the message in the node's error panel, so each says what to do."""

from __future__ import annotations


class DSDNodeError(ValueError):
    """A DSD node got inputs it cannot use (wrong model, wrong file, mismatched batch, ...)."""


class DSDAdapterError(DSDNodeError):
    """The file chosen in DSD Adapter Loader is not usable DSD weights for this model."""


class DSDModelMismatchError(DSDNodeError):
    """The MODEL is not a FLUX.1 model the DSD weights fit."""


class DSDBatchError(DSDNodeError):
    """Reference batch and latent batch do not fit together."""
