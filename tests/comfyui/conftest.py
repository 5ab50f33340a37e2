"""In-process ComfyUI harness for the DSD node pack (real ComfyUI, CPU, tiny models).

Finding ComfyUI: ``scripts/comfyui_host.py``'s rule (``COMFYUI_PATH``, the ComfyUI that contains this
pack, the prepared ``.cache/ComfyUI``); without one a test here fails under ``CI=true`` and is skipped
elsewhere, naming the command that prepares the host. The host is started once per session: ``--cpu`` is put into
``sys.argv`` before ``comfy.model_management`` is imported, ComfyUI's dir goes FIRST on
``sys.path`` (so its top-level ``nodes`` module wins over our ``nodes/`` package), builtin
extra nodes load (API nodes and other custom nodes do not), and our pack is loaded the way
ComfyUI loads a custom node: ``nodes.load_custom_node(<repo root>)`` (any folder name).

Fixtures (all session-scoped):
- ``comfy_host`` -> :class:`ComfyHost`: ``.root`` (ComfyUI dir), ``.nodes``/``.execution``/``.folder_paths``
  modules, ``.pack`` (our loaded package module), ``.node_class(node_id)``, ``.call(node_id, **inputs)``
  -> tuple of outputs (V1 or V3 node, under ``torch.inference_mode``), ``.object_info()`` -> dict like
  GET /object_info (served by the real aiohttp route).
- ``run_prompt`` -> ``run_prompt(prompt: dict) -> PromptRun``: validate_prompt + PromptExecutor in-process
  (one executor for the session, like the server's worker). ``PromptRun.ok``, ``.error`` (validation error
  dict or None), ``.node_errors``, ``.exec_error`` (the ``execution_error`` message dict: ``exception_message``,
  ``exception_type``, ``node_type``), ``.outputs`` (ui outputs), ``.captured`` (label -> value the
  ``DSDTest_Capture`` nodes received).
- ``tiny_weights`` -> :class:`TinyWeights`: the diffusers-side reference ``reference`` (DSDTransformer with
  the LoRA MERGED and the embedder loaded), ``base`` (DSDTransformer without LoRA), ``lora`` pairs,
  ``bfl_state`` (base FLUX in BFL keys), ``adapter`` (DSDAdapter), ``unet_config``.
- ``tiny_flux`` -> ``tiny_flux(weight_dtype=torch.float32, manual_cast=None) -> ModelPatcher`` of ComfyUI's own
  ``model_base.Flux`` with TINY_TRANSFORMER_CONFIG-equivalent params, base weights (no LoRA, no embedder).
- ``tiny_vae`` -> :class:`TinyVAE`: ``.comfy`` (``comfy.sd.VAE`` from diffusers FULL_VAE_CONFIG keys) and
  ``.diffusers`` (the identical ``AutoencoderKL``).
- ``text_cond`` -> ``text_cond(batch=1, seed=0, length=8) -> (comfy CONDITIONING, dsd TextConditioning)``.
- ``models_dir`` -> :class:`ModelsDir`: a temp dir registered with folder_paths (``diffusion_models``, ``vae``,
  ``dsd``, ``loras``) holding ``dsd/tiny_adapter.safetensors``, ``dsd/tiny_release/`` (authors' layout, same
  weights), ``loras/plain_lora.safetensors`` (a LoRA without embedder), ``loras/random.safetensors``,
  ``dsd/corrupt.safetensors``.
Test-only nodes registered into the host (so API-format prompts can run without big files):
``DSDTest_TinyFlux`` (-> MODEL), ``DSDTest_TinyVAE`` (-> VAE), ``DSDTest_TextCond`` (batch, seed -> CONDITIONING),
``DSDTest_Image`` (batch, height, width, seed -> IMAGE) and ``DSDTest_Capture`` (output node: label, value).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.needs import require_comfyui

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(Path(__file__).parent) not in sys.path:  # shared test helpers (dsd_graph.py) import by name
    sys.path.append(str(Path(__file__).parent))
TINY_UNET_CONFIG: dict[str, Any] = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": 32,
    "context_in_dim": 32,
    "hidden_size": 32,
    "mlp_ratio": 4.0,
    "num_heads": 2,
    "depth": 1,
    "depth_single_blocks": 1,
    "axes_dim": [4, 6, 6],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": True,
    "txt_ids_dims": [],
}


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.comfyui)


# ---------------------------------------------------------------- the host
@dataclass
class ComfyHost:
    root: Path
    nodes: Any
    execution: Any
    server: Any
    folder_paths: Any
    pack: Any
    loop: asyncio.AbstractEventLoop

    def node_class(self, node_id: str):
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]

    def call(self, node_id: str, **inputs) -> tuple:
        cls = self.node_class(node_id)
        with torch.inference_mode():
            if hasattr(cls, "GET_SCHEMA"):  # V3
                out = cls.execute(**inputs)
                if asyncio.iscoroutine(out):
                    out = self.loop.run_until_complete(out)
                return tuple(out.result) if out.result is not None else ()
            obj = cls()
            return tuple(getattr(obj, cls.FUNCTION)(**inputs))

    def object_info(self) -> dict:
        """GET /object_info through the server's real route handler (no socket)."""
        import json

        from aiohttp.test_utils import make_mocked_request

        instance = self.server.PromptServer.instance
        for route in instance.routes:
            if getattr(route, "method", None) == "GET" and getattr(route, "path", None) == "/object_info":
                resp = self.loop.run_until_complete(route.handler(make_mocked_request("GET", "/object_info", app=instance.app)))
                return json.loads(resp.text)
        raise RuntimeError("ComfyUI has no GET /object_info route")


def _start_host(root: Path) -> ComfyHost:
    root_s = str(root)
    sys.path[:] = [p for p in sys.path if p != root_s]
    sys.path.insert(0, root_s)
    if "nodes" in sys.modules and not str(getattr(sys.modules["nodes"], "__file__", "")).startswith(root_s):
        del sys.modules["nodes"]  # our own nodes/ package must never stand in for ComfyUI's nodes.py
    import importlib

    # ComfyUI parses sys.argv at import of comfy.cli_args: show it only "--cpu", not pytest's arguments.
    saved_argv = sys.argv[:]
    sys.argv[:] = [saved_argv[0], "--cpu"]
    importlib.import_module("comfy.options").enable_args_parsing()
    importlib.import_module("comfy.cli_args")
    sys.argv[:] = saved_argv
    # Order matters: utils.install_util and server before nodes (nodes.py puts comfy/ first on sys.path).
    importlib.import_module("utils.install_util")
    server = importlib.import_module("server")
    importlib.import_module("comfy.cli_args").args.cpu = True
    execution = importlib.import_module("execution")
    folder_paths = importlib.import_module("folder_paths")
    nodes = importlib.import_module("nodes")

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server.PromptServer(loop)
    loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    ok = loop.run_until_complete(nodes.load_custom_node(str(REPO_ROOT)))
    if not ok:
        raise RuntimeError(f"ComfyUI could not load the pack at {REPO_ROOT} (see the log above)")
    pack = sys.modules[str(REPO_ROOT).replace(".", "_x_")]
    host = ComfyHost(root, nodes, execution, server, folder_paths, pack, loop)
    _register_test_nodes(host)
    return host


@pytest.fixture(scope="session")
def comfy_host() -> ComfyHost:
    return _start_host(require_comfyui())


# ---------------------------------------------------------------- running prompts
@dataclass
class PromptRun:
    ok: bool
    error: dict | None = None
    node_errors: dict = field(default_factory=dict)
    exec_error: dict | None = None
    outputs: dict = field(default_factory=dict)
    captured: dict = field(default_factory=dict)
    messages: list = field(default_factory=list)


_CAPTURED: dict[str, Any] = {}


@pytest.fixture(scope="session")
def run_prompt(comfy_host):
    execution = comfy_host.execution
    executor = execution.PromptExecutor(comfy_host.server.PromptServer.instance, cache_type=False, cache_args={"lru": 0, "ram": 0})

    def run(prompt: dict) -> PromptRun:
        _CAPTURED.clear()
        pid = str(uuid.uuid4())
        valid = comfy_host.loop.run_until_complete(execution.validate_prompt(pid, prompt, None))
        if not valid[0]:
            return PromptRun(ok=False, error=valid[1], node_errors=valid[3])
        comfy_host.loop.run_until_complete(executor.execute_async(prompt, pid, {}, valid[2]))
        exec_error = next((d for ev, d in executor.status_messages if ev == "execution_error"), None)
        return PromptRun(
            ok=executor.success and exec_error is None,
            exec_error=exec_error,
            outputs=executor.history_result.get("outputs", {}),
            captured=dict(_CAPTURED),
            messages=list(executor.status_messages),
        )

    return run


# ---------------------------------------------------------------- tiny weights and models
@dataclass
class TinyWeights:
    base: Any  # dsd.model.DSDTransformer, LoRA not merged
    reference: Any  # same + LoRA merged (the diffusers-side reference for parity)
    lora: dict
    bfl_state: dict
    adapter: Any  # dsd.weights.adapter.DSDAdapter
    unet_config: dict


@pytest.fixture(scope="session")
def tiny_weights() -> TinyWeights:
    import copy

    from dsd.tiny import make_tiny_dsd, make_tiny_lora
    from dsd.weights.adapter import DSDAdapter
    from dsd.weights.layout import diffusers_to_bfl
    from dsd.weights.lora import merge_lora

    base = make_tiny_dsd(seed=0)
    lora = make_tiny_lora(base.transformer, rank=4, seed=0)
    reference = copy.deepcopy(base)
    merge_lora(reference.transformer, lora, 1.0)
    bfl = diffusers_to_bfl({k: v.detach().clone() for k, v in base.transformer.state_dict().items()})
    adapter = DSDAdapter(c_embedder={k: v.clone() for k, v in base.c_embedder_state_dict().items()}, lora=lora)
    return TinyWeights(base, reference, lora, bfl, adapter, dict(TINY_UNET_CONFIG))


def build_comfy_flux(bfl_state: dict, unet_config: dict, weight_dtype=torch.float32, manual_cast=None):
    """ComfyUI's own Flux (supported_models.Flux -> model_base.Flux) from a BFL state dict, in a ModelPatcher."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.Flux(dict(unet_config))
    model_config.set_inference_dtype(weight_dtype, manual_cast)
    model = model_config.get_model({}, "", device=torch.device("cpu"))
    model.load_model_weights({k: v.to(weight_dtype) for k, v in bfl_state.items()}, "")
    dev = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=comfy.model_management.unet_offload_device())


@pytest.fixture(scope="session")
def tiny_flux(comfy_host, tiny_weights):
    cache: dict = {}

    def make(weight_dtype=torch.float32, manual_cast=None):
        key = (weight_dtype, manual_cast)
        if key not in cache:
            cache[key] = build_comfy_flux(tiny_weights.bfl_state, tiny_weights.unet_config, weight_dtype, manual_cast)
        return cache[key]

    return make


@dataclass
class TinyVAE:
    comfy: Any
    diffusers: Any


@pytest.fixture(scope="session")
def tiny_vae(comfy_host) -> TinyVAE:
    import comfy.sd

    from dsd.tiny import FULL_VAE_CONFIG, make_tiny_vae

    dvae = make_tiny_vae(seed=0, config=FULL_VAE_CONFIG)
    sd = {k: v.detach().clone() for k, v in dvae.state_dict().items()}
    cvae = comfy.sd.VAE(sd=sd)
    return TinyVAE(cvae, dvae)


def make_text(batch: int = 1, seed: int = 0, length: int = 8, dim: int = 32, guidance: float = 3.5):
    from dsd.sampler import TextConditioning

    gen = torch.Generator("cpu").manual_seed(1000 + seed)
    ctx = torch.randn(batch, length, dim, generator=gen)
    pooled = torch.randn(batch, dim, generator=gen)
    return [[ctx, {"pooled_output": pooled, "guidance": guidance}]], TextConditioning(ctx, pooled)


@pytest.fixture(scope="session")
def text_cond():
    return make_text


# ---------------------------------------------------------------- files for the file-based loaders
@dataclass
class ModelsDir:
    root: Path
    adapter: Path
    release: Path
    plain_lora: Path
    random_file: Path
    corrupt: Path


@pytest.fixture(scope="session")
def models_dir(comfy_host, tiny_weights, tmp_path_factory) -> ModelsDir:
    from safetensors.torch import save_file

    from dsd.weights.adapter import save_adapter
    from dsd.weights.lora import lora_to_state_dict

    root = tmp_path_factory.mktemp("comfy_models")
    for sub in ("diffusion_models", "vae", "dsd", "loras"):
        (root / sub).mkdir()
        comfy_host.folder_paths.add_model_folder_path(sub, str(root / sub), is_default=True)
    adapter = save_adapter(tiny_weights.adapter, root / "dsd" / "tiny_adapter.safetensors")
    release = root / "dsd" / "tiny_release"
    _write_release(release, tiny_weights)
    plain = root / "loras" / "plain_lora.safetensors"
    save_file(lora_to_state_dict(tiny_weights.lora), str(plain))
    rnd = root / "loras" / "random.safetensors"
    save_file({"foo.weight": torch.randn(4, 4), "bar": torch.zeros(3)}, str(rnd))
    corrupt = root / "dsd" / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return ModelsDir(root, adapter, release, plain, rnd, corrupt)


def _write_release(folder: Path, w: TinyWeights) -> None:
    """The authors' layout with the SAME weights as the adapter (transformer/ + pytorch_lora_weights)."""
    import json

    from safetensors.torch import save_file

    from dsd.tiny import TINY_TRANSFORMER_CONFIG
    from dsd.weights.lora import lora_to_state_dict

    tdir = folder / "transformer"
    tdir.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in w.base.transformer.state_dict().items()}
    state.update({k: v.contiguous() for k, v in w.base.c_embedder_state_dict().items()})
    save_file(state, str(tdir / "diffusion_pytorch_model.safetensors"))
    (tdir / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel", **TINY_TRANSFORMER_CONFIG}))
    save_file(lora_to_state_dict(w.lora), str(folder / "pytorch_lora_weights.safetensors"))


# ---------------------------------------------------------------- test-only nodes
def _register_test_nodes(host: ComfyHost) -> None:
    state: dict[str, Any] = {}

    class TinyFluxNode:
        CATEGORY = "DSD/testing"
        RETURN_TYPES = ("MODEL",)
        FUNCTION = "run"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"kind": (["flux", "not_flux"],)}}

        def run(self, kind):
            return (state["models"][kind],)

    class TinyVAENode:
        CATEGORY = "DSD/testing"
        RETURN_TYPES = ("VAE",)
        FUNCTION = "run"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        def run(self):
            return (state["vae"],)

    class TextCondNode:
        CATEGORY = "DSD/testing"
        RETURN_TYPES = ("CONDITIONING",)
        FUNCTION = "run"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"batch": ("INT", {"default": 1, "min": 1}), "seed": ("INT", {"default": 0})}}

        def run(self, batch, seed):
            return (make_text(batch, seed)[0],)

    class ImageNode:
        CATEGORY = "DSD/testing"
        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "run"

        @classmethod
        def INPUT_TYPES(cls):
            return {
                "required": {
                    "batch": ("INT", {"default": 1, "min": 1}),
                    "height": ("INT", {"default": 64, "min": 1}),
                    "width": ("INT", {"default": 64, "min": 1}),
                    "seed": ("INT", {"default": 0}),
                }
            }

        def run(self, batch, height, width, seed):
            gen = torch.Generator("cpu").manual_seed(seed)
            return (torch.rand(batch, height, width, 3, generator=gen),)

    class CaptureNode:
        CATEGORY = "DSD/testing"
        RETURN_TYPES = ()
        FUNCTION = "run"
        OUTPUT_NODE = True

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"label": ("STRING", {"default": "out"}), "value": ("*",)}}

        @classmethod
        def VALIDATE_INPUTS(cls, input_types):
            return True

        def run(self, label, value):
            _CAPTURED[label] = value
            return {}

    host.test_state = state  # type: ignore[attr-defined]
    for name, cls in {
        "DSDTest_TinyFlux": TinyFluxNode,
        "DSDTest_TinyVAE": TinyVAENode,
        "DSDTest_TextCond": TextCondNode,
        "DSDTest_Image": ImageNode,
        "DSDTest_Capture": CaptureNode,
    }.items():
        host.nodes.NODE_CLASS_MAPPINGS[name] = cls


@pytest.fixture(scope="session")
def test_nodes(comfy_host, tiny_flux, tiny_vae):
    """Fills the models the DSDTest_* nodes hand out: ``flux`` (tiny FLUX) and ``not_flux`` (a tiny SD-style model)."""
    comfy_host.test_state["models"] = {"flux": tiny_flux(), "not_flux": build_not_flux()}
    comfy_host.test_state["vae"] = tiny_vae.comfy
    return comfy_host.test_state


@pytest.fixture(scope="session")
def not_flux_model():
    """``not_flux_model()`` -> a tiny non-FLUX ModelPatcher (SD3's MMDiT)."""
    return build_not_flux


def build_not_flux():
    """A tiny non-FLUX ComfyUI model: SD3's MMDiT (same 16-channel latent, different architecture)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    cfg = {
        "in_channels": 16,
        "out_channels": 16,
        "patch_size": 2,
        "depth": 1,
        "num_patches": 64 * 64,
        "pos_embed_max_size": 64,
        "adm_in_channels": 32,
        "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 64}},
    }
    model_config = comfy.supported_models.SD3(cfg)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device=torch.device("cpu"))
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


@pytest.fixture
def private_user_and_keys(comfy_host, tmp_path, monkeypatch):
    """A private ComfyUI user dir and DSD key store, and no provider keys in the environment; yields tmp_path."""
    from dsd.providers.config import KEY_ENV_VARS

    fp = comfy_host.folder_paths
    old = fp.get_user_directory()
    fp.set_user_directory(str(tmp_path / "user"))
    monkeypatch.setenv("DSD_KEY_STORE", str(tmp_path / "secrets" / "api_keys.json"))
    for name in {n for names in KEY_ENV_VARS.values() for n in names}:
        monkeypatch.delenv(name, raising=False)
    yield tmp_path
    fp.set_user_directory(old)
