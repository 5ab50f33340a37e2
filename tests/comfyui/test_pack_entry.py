"""The pack entry: every node registers, our import errors surface, models/dsd is registered in one place."""

from __future__ import annotations

import importlib
import sys

import pytest


def test_every_node_registers(comfy_host):
    for node_id in ("DSDAdapterLoader", "DSDReferenceConditioning", "DSDGuider", "DSDSplitCanvas", "DSDControlHintToFrame",
                    "DSDPromptEnhance", "DSDIdentityScore"):  # fmt: skip
        assert node_id in comfy_host.nodes.NODE_CLASS_MAPPINGS, node_id


def test_an_import_error_in_our_modules_fails_loudly(comfy_host, monkeypatch):
    pack_nodes = importlib.import_module(f"{comfy_host.pack.__name__}.nodes")
    # None in sys.modules makes the next import of that module raise, as a broken module would
    monkeypatch.setitem(sys.modules, f"{comfy_host.pack.__name__}.nodes.prompt", None)
    with pytest.raises(ImportError, match="prompt"):
        pack_nodes.node_list()


def test_model_folder_is_registered_by_the_pack_entry_only(comfy_host, monkeypatch):
    folders = comfy_host.folder_paths.folder_names_and_paths
    assert folders["dsd"][0][0].endswith("dsd")  # registered when ComfyUI loaded the pack (comfy_entrypoint)
    monkeypatch.delitem(folders, "dsd")
    importlib.import_module(f"{comfy_host.pack.__name__}.nodes").node_list()
    assert "dsd" not in folders  # node_list registers nothing: the entry is the one place
