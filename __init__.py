"""ComfyUI entry point of the DSD node pack (Diffusion Self-Distillation on ComfyUI's own FLUX).

The nodes register only inside ComfyUI (when ``comfy_api`` imports); elsewhere this package
still imports so that ``dsd``/``datagen``/``training`` work as plain Python.
"""

from __future__ import annotations

try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # not running inside ComfyUI
    ComfyExtension = None

WEB_DIRECTORY = "./web"  # the settings panel's API-key editor (talks to the /dsd/keys routes)

if ComfyExtension is not None:

    class DSDExtension(ComfyExtension):
        async def get_node_list(self) -> list:
            from .nodes import node_list

            return node_list()

    async def comfy_entrypoint() -> DSDExtension:
        from .nodes.example_inputs import install as install_example_inputs
        from .nodes.keys import install as install_key_store
        from .nodes.loaders import register_model_folder

        register_model_folder()
        install_key_store()  # /dsd/keys routes; moves keys out of comfy.settings.json
        install_example_inputs()  # the images the shipped workflows name, into input/ when absent
        return DSDExtension()
