"""The pack loads in the real ComfyUI and every DSD node is served by /object_info."""

from __future__ import annotations

DSD_NODES = ("DSDAdapterLoader", "DSDReferenceConditioning", "DSDGuider", "DSDSplitCanvas", "DSDControlHintToFrame",
             "DSDIdentityScore", "DSDMultiReferenceConditioning")


def test_pack_loads_and_nodes_in_object_info(comfy_host):
    info = comfy_host.object_info()
    for node_id in DSD_NODES:
        assert node_id in info, f"{node_id} missing from /object_info"
        entry = info[node_id]
        assert entry["category"].startswith("DSD/")
        for section in ("required", "optional"):
            for name, spec in entry["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert info["DSDReferenceConditioning"]["output"] == ["CONDITIONING", "CONDITIONING", "LATENT", "DSD_LAYOUT"]
    assert info["DSDMultiReferenceConditioning"]["output"] == info["DSDReferenceConditioning"]["output"]
    assert info["DSDGuider"]["output"] == ["GUIDER"]
    assert info["DSDSplitCanvas"]["output"] == ["IMAGE", "IMAGE", "IMAGE"]  # new outputs only ever appended
    # our nodes/ package did not shadow ComfyUI's top-level nodes module
    assert comfy_host.nodes.__file__.endswith("nodes.py")
