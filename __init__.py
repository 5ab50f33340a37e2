"""ComfyUI entry point of the DSD node pack (Diffusion Self-Distillation on ComfyUI's own FLUX).

The nodes register only inside ComfyUI (when ``comfy_api`` imports); elsewhere this package
still imports so that ``dsd``/``datagen``/``training`` work as plain Python.
"""

from __future__ import annotations

try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # not running inside ComfyUI
    ComfyExtension = None

WEB_DIRECTORY = "./web"  # settings entries for the prompt enhancer's API keys

if ComfyExtension is not None:

    class DSDExtension(ComfyExtension):
        async def get_node_list(self) -> list:
            from .nodes import node_list

            return node_list()

    async def comfy_entrypoint() -> DSDExtension:
        from .nodes.loaders import register_model_folder

        register_model_folder()
        return DSDExtension()
