"""The ComfyUI layer of DSD: one module per node family, all on ComfyUI's own FLUX MODEL."""

from __future__ import annotations


def node_list() -> list:
    """Every DSD node. An import error in one of our modules fails loudly here (no node silently missing);
    the prompt node imports its optional SDKs only when it runs, and the pack entry (``../__init__.py``)
    registers the ``models/dsd`` folder, once, before this runs."""
    from .canvas import DSDSplitCanvas
    from .conditioning import DSDReferenceConditioning
    from .control import DSDControlHintToFrame
    from .eval import DSDIdentityScore
    from .guidance import DSDGuider
    from .loaders import DSDAdapterLoader
    from .multiref import DSDMultiReferenceConditioning
    from .prompt import DSDPromptEnhance

    nodes = [DSDAdapterLoader, DSDReferenceConditioning, DSDGuider, DSDSplitCanvas, DSDControlHintToFrame,
             DSDIdentityScore]
    nodes.append(DSDPromptEnhance)
    nodes.append(DSDMultiReferenceConditioning)
    return nodes
