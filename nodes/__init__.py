"""The ComfyUI layer of DSD: one module per node family, all on ComfyUI's own FLUX MODEL."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def node_list() -> list:
    from .canvas import DSDSplitCanvas
    from .conditioning import DSDReferenceConditioning
    from .control import DSDControlHintToFrame
    from .guidance import DSDGuider
    from .loaders import DSDAdapterLoader, register_model_folder

    register_model_folder()
    nodes = [DSDAdapterLoader, DSDReferenceConditioning, DSDGuider, DSDSplitCanvas, DSDControlHintToFrame]
    try:  # written separately; an unfinished module must not take the pack down
        from .prompt import DSDPromptEnhance

        nodes.append(DSDPromptEnhance)
    except Exception as exc:  # noqa: BLE001 - any import failure of the optional node
        logger.warning("DSD: prompt enhancement node unavailable (%s: %s)", type(exc).__name__, exc)
    return nodes
