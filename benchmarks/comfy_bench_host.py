"""Shared setup of the ComfyUI benchmarks: the real ComfyUI in-process (CPU) with this pack loaded,
a full-width FLUX (hidden 3072, 1 double block) built from random weights, and a DSD adapter file for it."""

from __future__ import annotations

import asyncio
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from scripts import comfyui_host

REPO_ROOT = Path(__file__).resolve().parents[1]

FULL_UNET_CONFIG = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 768,
    "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 1, "depth_single_blocks": 0,
    "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
    "txt_ids_dims": [],
}  # fmt: skip
ATTN_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")  # fmt: skip


def find_comfyui() -> Path:
    root = comfyui_host.find_comfyui()
    if root is None:
        raise SystemExit(f"no ComfyUI found: set COMFYUI_PATH or run {comfyui_host.PREPARE_COMMAND}")
    return root


ATTENTION_FLAGS = {"pytorch": ["--use-pytorch-cross-attention"], "comfy-default": []}


def add_host_args(ap) -> None:
    """The options every ComfyUI benchmark shares (threads and attention are set identically on both sides)."""
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads, both sides (default 2)")
    ap.add_argument("--attention", choices=sorted(ATTENTION_FLAGS), default="pytorch",
                    help="ComfyUI's attention: 'pytorch' (--use-pytorch-cross-attention: the SDPA kernel diffusers uses) "
                         "or 'comfy-default' (sub-quadratic attention, ComfyUI's CPU default)")  # fmt: skip


class Host:
    def __init__(self, threads: int = 2, attention: str = "pytorch", cpu: bool = True, extra_args: tuple[str, ...] = ()) -> None:
        """``cpu=False`` lets ComfyUI pick its GPU as in a normal install; ``extra_args``: more ComfyUI
        command-line flags (both for the GPU suite)."""
        torch.set_num_threads(threads)
        root = str(find_comfyui())
        # ComfyUI is not an installable package: its modules (comfy, nodes, server, ...) import only from its own
        # root, which must come first so its top-level ``nodes`` wins over this pack's ``nodes/`` in the repo root.
        sys.path.insert(0, root)
        argv = sys.argv[:]
        sys.argv[:] = [argv[0], *(["--cpu"] if cpu else []), *ATTENTION_FLAGS[attention], *extra_args]
        importlib.import_module("comfy.options").enable_args_parsing()
        importlib.import_module("comfy.cli_args")
        sys.argv[:] = argv
        importlib.import_module("utils.install_util")
        server = importlib.import_module("server")
        self.nodes = importlib.import_module("nodes")
        self.folder_paths = importlib.import_module("folder_paths")
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        server.PromptServer(self.loop)
        self.loop.run_until_complete(self.nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        if not self.loop.run_until_complete(self.nodes.load_custom_node(str(REPO_ROOT))):
            raise SystemExit("the DSD pack failed to load")
        self.tmp = Path(tempfile.mkdtemp(prefix="dsd_bench_"))
        (self.tmp / "dsd").mkdir()
        self.folder_paths.add_model_folder_path("dsd", str(self.tmp / "dsd"), is_default=True)

    def call(self, node_id: str, **inputs) -> tuple:
        cls = self.nodes.NODE_CLASS_MAPPINGS[node_id]
        with torch.inference_mode():
            if hasattr(cls, "GET_SCHEMA"):
                return tuple(cls.execute(**inputs).result)
            return tuple(getattr(cls(), cls.FUNCTION)(**inputs))


@torch.no_grad()
def build_flux(seed: int = 0, dtype=torch.float32, unet_config: dict | None = None):
    """ComfyUI's own Flux at ``unet_config`` (default: full width), random weights (std 0.02), in a ModelPatcher."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    cfg = comfy.supported_models.Flux(dict(unet_config or FULL_UNET_CONFIG))
    cfg.set_inference_dtype(dtype, None)
    model = cfg.get_model({}, "", device=torch.device("cpu"))
    gen = torch.Generator("cpu").manual_seed(seed)
    for name, p in sorted(model.diffusion_model.named_parameters()):
        p.copy_(torch.randn(p.shape, generator=gen) * (0.02 if p.ndim > 1 else 0.01) + (1.0 if "scale" in name else 0.0))
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def make_pairs(rank: int, seed: int = 0, hidden: int = 3072, targets=ATTN_TARGETS) -> dict:
    """Random LoRA pairs on block 0's attention projections (diffusers module paths)."""
    from dsd.weights.lora import LoraPair

    gen = torch.Generator("cpu").manual_seed(seed + 1)
    return {f"transformer_blocks.0.{t}": LoraPair(0.01 * torch.randn(rank, hidden, generator=gen),
                                                 0.01 * torch.randn(hidden, rank, generator=gen))
            for t in targets}  # fmt: skip


def write_adapter(path: Path, pairs: dict, seed: int = 0, hidden: int = 3072) -> Path:
    from dsd.weights.adapter import DSDAdapter, save_adapter

    gen = torch.Generator("cpu").manual_seed(seed + 2)
    emb = {"c_embedder.weight": 0.02 * torch.randn(hidden, 64, generator=gen), "c_embedder.bias": torch.zeros(hidden)}
    return save_adapter(DSDAdapter(c_embedder=emb, lora=pairs), path)


def text(seed: int = 0, length: int = 32, dim: int = 768):
    gen = torch.Generator("cpu").manual_seed(seed)
    return [[torch.randn(1, length, dim, generator=gen), {"pooled_output": torch.randn(1, dim, generator=gen), "guidance": 3.5}]]


class StepTimer:
    """Wrapper recording the wall time of every call. ``PREDICT_NOISE`` (default) times one whole
    sampler step: the guider's cond batching, every transformer call of that step and the CFG mix;
    ``DIFFUSION_MODEL`` times the transformer calls alone."""

    def __init__(self, wrapper: str = "predict_noise") -> None:
        self.times: list[float] = []
        self.wrapper = wrapper

    def __call__(self, executor, *args, **kwargs):
        t = time.perf_counter()
        out = executor(*args, **kwargs)
        self.times.append(time.perf_counter() - t)
        return out

    def attach(self, model):

        m = model.clone()
        m.add_wrapper_with_key(self.wrapper, "bench_timer", self)
        return m


def sample(host: Host, model, guider, latent, steps: int, width: int, height: int, seed: int = 0) -> float:
    """Run SamplerCustomAdvanced; returns wall seconds."""
    (sigmas,) = host.call("BasicScheduler", model=model, scheduler="simple", steps=steps, denoise=1.0)
    (noise,) = host.call("RandomNoise", noise_seed=seed)
    (sampler,) = host.call("KSamplerSelect", sampler_name="euler")
    t = time.perf_counter()
    host.call("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas, latent_image=latent)
    return time.perf_counter() - t


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> str:
    """``median [min..max]`` of a list of ratios or times."""
    return f"{statistics.median(xs):.3f} [{min(xs):.3f}..{max(xs):.3f}]"
