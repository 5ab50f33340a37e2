"""DSD composes with ComfyUI's own nodes: one real-executor graph per row of ``compat_rows.ROWS``.

Every graph is DSD Adapter Loader + DSD Reference Conditioning + DSD Guider (or the node under test) on the
tiny FLUX; the sampled latent is compared with DSD alone. "Equal" means within float rounding (1e-5 on
latents of scale ~3); "changes" means a difference above 1e-3. The executor's cache keeps the shared
part (the VAE encode of the reference) between graphs, so the matrix costs seconds.
"""

from __future__ import annotations

import itertools
import logging
import re
import uuid

import compat_rows
import pytest
import torch

STEPS, EQ, CHANGED = 4, 1e-5, 1e-3
COVERED: set[str] = set()


def covers(*rows: str):
    """Names the README rows a test proves (the README test checks that every row is covered)."""
    COVERED.update(rows)
    return lambda test: test


class Graph:
    """An API-format DSD prompt; ``patch`` puts a MODEL node between ModelSamplingFlux and the sampler."""

    def __init__(self, s_i: float = 2.0, cfg_start_step: int = 1):
        self.ids = itertools.count()
        self.nodes: dict[str, dict] = {}
        self.add("DSDTest_TinyFlux", "flux", kind="flux")
        self.add("DSDTest_TinyVAE", "vae")
        self.add("DSDTest_TextCond", "pos", batch=1, seed=0)
        self.add("DSDTest_TextCond", "neg", batch=1, seed=1)
        self.add("DSDTest_Image", "ref", batch=1, height=80, width=96, seed=5)
        self.model = self.add("DSDAdapterLoader", "adapter", model=["flux", 0], adapter="tiny_adapter.safetensors", strength=1.0)
        self.add("DSDReferenceConditioning", "refcond", positive=["pos", 0], negative=["neg", 0], vae=["vae", 0],
                 image=["ref", 0], width=128, height=64, fit="crop", batch_size=1)  # fmt: skip
        self.positive, self.negative, self.latent = ["refcond", 0], ["refcond", 1], ["refcond", 2]
        self.msf = {"max_shift": 1.15, "base_shift": 0.5}
        self.s_i, self.cfg_start_step, self.denoise = s_i, cfg_start_step, 1.0
        self.guider: list | None = None
        self.ksampler_cfg: float | None = None  # stock KSampler (cfg) instead of DSD Guider + SamplerCustomAdvanced

    def add(self, class_type: str, node_id: str | None = None, **inputs) -> list:
        node_id = node_id or f"n{next(self.ids)}"
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return [node_id, 0]

    def patch(self, class_type: str, **inputs) -> list:
        self.model = self.add(class_type, model=self.model, **inputs)
        return self.model

    def prompt(self, label: str) -> dict:
        nodes = dict(self.nodes)
        g = Graph.__new__(Graph)
        g.nodes, g.ids = nodes, itertools.count(1000)
        model = g.add("ModelSamplingFlux", "msf", model=self.model, width=128, height=64, **self.msf)
        if self.ksampler_cfg is not None:
            g.add("KSampler", "sample", model=model, seed=7, steps=STEPS, cfg=self.ksampler_cfg, sampler_name="euler",
                  scheduler="simple", positive=self.positive, negative=self.negative, latent_image=self.latent,
                  denoise=self.denoise)  # fmt: skip
            g.add("DSDTest_Capture", "capture", label=label, value=["sample", 0])
            return nodes
        sigmas = g.add("BasicScheduler", "sched", model=model, scheduler="simple", steps=STEPS, denoise=self.denoise)
        guider = self.guider or g.add("DSDGuider", "guider", model=model, positive=self.positive, negative=self.negative,
                                      image_guidance=self.s_i, text_guidance=1.5, cfg_start_step=self.cfg_start_step)  # fmt: skip
        g.add("SamplerCustomAdvanced", "sample", noise=g.add("RandomNoise", noise_seed=7), guider=guider,
              sampler=g.add("KSamplerSelect", sampler_name="euler"), sigmas=sigmas, latent_image=self.latent)  # fmt: skip
        g.add("DSDTest_Capture", "capture", label=label, value=["sample", 0])
        return nodes


@pytest.fixture(scope="module")
def sample(run_prompt, test_nodes, models_dir, compat_nodes):
    def run(graph: Graph, also: list | None = None, source: list | None = None):
        """The sampled latent (or ``source``'s), and ``also``'s latent when given."""
        label = f"compat-{uuid.uuid4().hex}"  # a new label: the capture node is never served from the cache
        prompt = graph.prompt(label)
        if source is not None:
            prompt["capture"]["inputs"]["value"] = source
        if also is not None:
            prompt["capture_also"] = {"class_type": "DSDTest_Capture", "inputs": {"label": label + "-also", "value": also}}
        result = run_prompt(prompt)
        assert result.ok, result.error or result.exec_error
        out = result.captured[label]["samples"].float()
        return out if also is None else (out, result.captured[label + "-also"]["samples"].float())

    return run


class Alone(dict):
    """DSD alone (text guidance 1.5) by image guidance, sampled on first use."""

    def __init__(self, sample):
        super().__init__()
        self.sample = sample

    def __missing__(self, s_i: float) -> torch.Tensor:
        self[s_i] = self.sample(Graph(s_i=s_i))
        return self[s_i]


@pytest.fixture(scope="module")
def alone(sample):
    return Alone(sample)


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def assert_neutral_and_active(sample, alone, node: str, neutral: dict, active: dict, s_i: float = 2.0):
    for settings, same in ((neutral, True), (active, False)):
        g = Graph(s_i=s_i)
        g.patch(node, **settings)
        d = diff(sample(g), alone[s_i])
        print(f"{node} {settings} s_i={s_i}: max abs change {d:.3e}")
        assert (d < EQ) if same else (d > CHANGED), f"{node} {settings}: change {d:.3e}"


# ---------------------------------------------------------------- guidance tweaks
GUIDANCE = {
    "FreSca": ({"scale_low": 1.0, "scale_high": 1.0, "freq_cutoff": 20}, {"scale_low": 1.0, "scale_high": 1.5, "freq_cutoff": 1}),
    "RescaleCFG": ({"multiplier": 0.0}, {"multiplier": 0.7}),
    "SkipLayerGuidanceDiT": (
        {"double_layers": "0", "single_layers": "0", "scale": 0.0, "start_percent": 0.0, "end_percent": 1.0, "rescaling_scale": 0.0},
        {"double_layers": "0", "single_layers": "0", "scale": 3.0, "start_percent": 0.0, "end_percent": 1.0, "rescaling_scale": 0.0},
    ),
    "SkipLayerGuidanceDiTSimple": (
        {"double_layers": "", "single_layers": "", "start_percent": 0.0, "end_percent": 1.0},
        {"double_layers": "0", "single_layers": "0", "start_percent": 0.0, "end_percent": 1.0},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("node", sorted(GUIDANCE))
@covers(*GUIDANCE)
def test_guidance_patch_applies_through_dsd_guider(sample, alone, node):
    neutral, active = GUIDANCE[node]
    assert_neutral_and_active(sample, alone, node, neutral, active)


SETTING_FREE = {"CFGZeroStar": {}, "Mahiro": {}, "TCFG": {}, "CFGNorm": {"strength": 1.0}}


@pytest.mark.slow
@pytest.mark.parametrize("node", sorted(SETTING_FREE))
@covers(*SETTING_FREE)
def test_setting_free_guidance_patch(sample, alone, node):
    """No neutral setting: with one pass per step (s_i 1) there is nothing to guide, with true CFG it applies."""
    for s_i, same in ((1.0, True), (2.0, False)):
        g = Graph(s_i=s_i)
        g.patch(node, **SETTING_FREE[node])
        d = diff(sample(g), alone[s_i])
        print(f"{node} s_i={s_i}: max abs change {d:.3e}")
        assert (d < EQ) if same else (d > CHANGED), f"{node} s_i={s_i}: change {d:.3e}"


KSAMPLER_PATCHES = {"APG": {"eta": 0.0, "norm_threshold": 5.0, "momentum": -0.5}, "TCFG": {}, "CFGZeroStar": {},
                    "RescaleCFG": {"multiplier": 0.7}, "FreSca": {"scale_low": 1.0, "scale_high": 1.5, "freq_cutoff": 1}}


@pytest.mark.slow
@covers(*KSAMPLER_PATCHES)
def test_guidance_patches_with_stock_ksampler(sample):
    """KSampler at cfg 2 on the DSD model and conditioning: ComfyUI's own CFG (prompt vs negative, both with the
    reference), the patches apply as they do without DSD."""
    g = Graph()
    g.ksampler_cfg = 2.0
    plain = sample(g)
    for node, settings in KSAMPLER_PATCHES.items():
        g = Graph()
        g.ksampler_cfg = 2.0
        g.patch(node, **settings)
        d = diff(sample(g), plain)
        print(f"{node} KSampler cfg 2: max abs change {d:.3e}")
        assert d > 1e-4, node  # the tiny model's prompt-vs-negative guidance is weak: smaller changes, still 100x rounding


@pytest.mark.slow
@covers("APG")
def test_apg_applies_as_in_core(sample, alone):
    """APG's eta 1 (no threshold, no momentum) is, in core's formula, plain CFG one scale higher: the same here."""
    g = Graph(s_i=2.0)
    g.patch("APG", eta=1.0, norm_threshold=0.0, momentum=0.0)
    d = diff(sample(g), alone[3.0])
    print(f"APG(eta 1) s_i=2 vs DSD s_i=3: max abs diff {d:.3e}")
    assert d < 1e-4
    g = Graph(s_i=2.0)
    g.patch("APG", eta=0.0, norm_threshold=5.0, momentum=-0.5)
    assert diff(sample(g), alone[3.0]) > CHANGED and diff(sample(g), alone[2.0]) > CHANGED



# ---------------------------------------------------------------- speed
def skipped_steps(caplog, name: str) -> int:
    found = [re.search(rf"{name} - skipped (\d+)/", r.getMessage()) for r in caplog.records]
    return int([m for m in found if m][-1].group(1))


@pytest.mark.slow
@pytest.mark.parametrize("node", ["EasyCache", "LazyCache"])
@pytest.mark.parametrize("s_i", [1.0, 2.0])
@covers("EasyCache", "LazyCache")
def test_speed_cache(sample, alone, caplog, node, s_i):
    caplog.set_level(logging.INFO)
    # EasyCache caches per branch: true CFG must run from the first step (DSD Guider refuses otherwise, see below)
    start = 0 if node == "EasyCache" else 2
    uncached = sample(Graph(s_i=s_i, cfg_start_step=start))
    g = Graph(s_i=s_i, cfg_start_step=start)
    g.patch(node, reuse_threshold=0.0, start_percent=0.0, end_percent=1.0, verbose=False)
    d = diff(sample(g), uncached)
    assert skipped_steps(caplog, node) == 0 and d < EQ, f"{node} skipping nothing must equal DSD alone ({d:.3e})"
    PROBE.clear()
    g = Graph(s_i=s_i, cfg_start_step=start)
    g.patch(node, reuse_threshold=3.0, start_percent=0.0, end_percent=1.0, verbose=False)
    g.patch("DSDTestCompat_Probe")
    d = diff(sample(g), uncached)
    skipped = skipped_steps(caplog, node)
    print(f"{node} s_i={s_i}: skipped {skipped}/{STEPS} steps, max abs change {d:.3e}")
    assert skipped > 0 and d > CHANGED
    for e_t0, e_00, e_full in PROBE:  # true-CFG steps, cached or not: each branch keeps its own prediction
        assert min(diff(e_t0, e_00), diff(e_full, e_t0), diff(e_full, e_00)) > CHANGED


@pytest.mark.slow
@covers("EasyCache")
def test_easycache_with_late_true_cfg_is_refused(run_prompt, sample):
    g = Graph(s_i=2.0, cfg_start_step=2)
    g.patch("EasyCache", reuse_threshold=3.0, start_percent=0.0, end_percent=1.0, verbose=False)
    result = run_prompt(g.prompt("easycache-late-cfg"))
    assert not result.ok and "cfg_start_step to 0" in result.exec_error["exception_message"]


@pytest.mark.slow
@pytest.mark.parametrize("node", ["EasyCache", "LazyCache"])
@covers("EasyCache", "LazyCache")
def test_speed_cache_with_stock_ksampler(sample, caplog, node):
    """KSampler at cfg 1 on the DSD model and conditioning (one pass per step)."""
    caplog.set_level(logging.INFO)
    g = Graph()
    g.ksampler_cfg = 1.0
    alone_ks = sample(g)
    for threshold, same in ((0.0, True), (3.0, False)):
        g = Graph()
        g.ksampler_cfg = 1.0
        g.patch(node, reuse_threshold=threshold, start_percent=0.0, end_percent=1.0, verbose=False)
        d = diff(sample(g), alone_ks)
        skipped = skipped_steps(caplog, node)
        print(f"{node} KSampler threshold {threshold}: skipped {skipped}/{STEPS}, max abs change {d:.3e}")
        assert (skipped == 0 and d < EQ) if same else (skipped > 0 and d > CHANGED)


@covers("TorchCompileModel")
def test_torch_compile_keeps_dsd(comfy_host, run_prompt, sample):
    """Compiling takes minutes on this CPU, so it is not run here: the compiled model keeps DSD and the guider takes it."""
    import comfy.patcher_extension

    g = Graph()
    dsd_model = g.model
    g.patch("TorchCompileModel", backend="inductor")
    prompt = g.prompt("compiled")
    del prompt["sample"]
    prompt["capture"]["inputs"]["value"] = ["guider", 0]
    prompt["capture_model"] = {"class_type": "DSDTest_Capture", "inputs": {"label": "compiled_model", "value": g.model}}
    prompt["capture_dsd"] = {"class_type": "DSDTest_Capture", "inputs": {"label": "dsd_model", "value": dsd_model}}
    result = run_prompt(prompt)
    assert result.ok, result.exec_error
    compiled, dsd = result.captured["compiled_model"], result.captured["dsd_model"]
    assert comfy_host.pack.nodes.patch.has_dsd(compiled)
    for kind, by_key in dsd.wrappers.items():
        assert by_key.keys() <= compiled.wrappers[kind].keys(), "DSD's wrappers stay on the compiled model"
    apply_model = comfy.patcher_extension.WrappersMP.APPLY_MODEL
    assert len(compiled.wrappers.get(apply_model, {})) == len(dsd.wrappers.get(apply_model, {})) + 1


# ---------------------------------------------------------------- guiders and models
@pytest.mark.slow
@covers("PerpNegGuider")
def test_perp_neg_guider_with_dsd_model_and_conditioning(sample, alone):
    for cfg, neg_scale, same in ((1.0, 0.0, True), (2.0, 1.0, False)):
        g = Graph(s_i=1.0)
        model = g.add("ModelSamplingFlux", model=g.model, width=128, height=64, **g.msf)
        g.guider = g.add("PerpNegGuider", model=model, positive=g.positive, negative=g.negative,
                         empty_conditioning=g.negative, cfg=cfg, neg_scale=neg_scale)  # fmt: skip
        d = diff(sample(g), alone[1.0])
        assert (d < EQ) if same else (d > CHANGED), f"PerpNegGuider cfg={cfg} neg_scale={neg_scale}: {d:.3e}"


@pytest.mark.slow
@covers("LoraLoaderModelOnly")
def test_style_lora_before_and_after_dsd(sample, alone):
    results = {}
    for order in ("after", "before"):
        for strength in (0.0, 1.0):
            g = Graph()
            if order == "after":
                g.patch("LoraLoaderModelOnly", lora_name="style_lora.safetensors", strength_model=strength)
            else:
                g.nodes["adapter"]["inputs"]["model"] = g.add("LoraLoaderModelOnly", model=["flux", 0],
                                                              lora_name="style_lora.safetensors", strength_model=strength)  # fmt: skip
            results[order, strength] = sample(g)
        assert diff(results[order, 0.0], alone[2.0]) < EQ
        assert diff(results[order, 1.0], alone[2.0]) > CHANGED
    assert diff(results["before", 1.0], results["after", 1.0]) < 1e-4, "order must not matter"


@pytest.mark.slow
@covers("ModelMergeSimple")
def test_model_merge(sample, alone, run_prompt):
    def merged(first_dsd: bool, ratio: float) -> Graph:
        g = Graph()
        plain = g.add("LoraLoaderModelOnly", model=["flux", 0], lora_name="style_lora.safetensors", strength_model=1.0)
        pair = (g.model, plain) if first_dsd else (plain, g.model)
        g.model = g.add("ModelMergeSimple", model1=pair[0], model2=pair[1], ratio=ratio)
        return g

    assert diff(sample(merged(True, 1.0)), alone[2.0]) < EQ
    assert diff(sample(merged(True, 0.5)), alone[2.0]) > CHANGED
    # two DSD models (adapter at strength 1 and 0.5): the LoRA weights merge, the embedder is model1's
    g = Graph()
    half = g.add("DSDAdapterLoader", model=["flux", 0], adapter="tiny_adapter.safetensors", strength=0.5)
    g.model = g.add("ModelMergeSimple", model1=g.model, model2=half, ratio=0.5)
    assert diff(sample(g), alone[2.0]) > CHANGED
    result = run_prompt(merged(False, 0.5).prompt("merge-plain-first"))
    assert not result.ok and "no DSD adapter" in result.exec_error["exception_message"]


@pytest.mark.slow
@covers("CreateHookLora")
def test_hook_lora_on_positive(sample, alone):
    for strength, same in ((0.0, True), (1.0, False)):
        g = Graph()
        hooks = g.add("CreateHookLora", lora_name="style_lora.safetensors", strength_model=strength, strength_clip=0.0)
        g.positive = g.add("ConditioningSetProperties", cond_NEW=g.positive, strength=1.0, set_cond_area="default", hooks=hooks)
        d = diff(sample(g), alone[2.0])
        assert (d < EQ) if same else (d > CHANGED), f"hook LoRA strength {strength}: {d:.3e}"


@pytest.mark.slow
@covers("ModelSamplingFlux", "FluxGuidance")
def test_model_sampling_and_flux_guidance(sample, alone):
    g = Graph()
    g.msf = {"max_shift": 2.0, "base_shift": 0.2}
    assert diff(sample(g), alone[2.0]) > CHANGED
    for guidance, same in ((3.5, True), (5.0, False)):
        g = Graph()
        g.positive = g.add("FluxGuidance", conditioning=g.positive, guidance=guidance)
        g.negative = g.add("FluxGuidance", conditioning=g.negative, guidance=guidance)
        d = diff(sample(g), alone[2.0])
        assert (d < EQ) if same else (d > CHANGED), f"FluxGuidance {guidance}: {d:.3e}"


# ---------------------------------------------------------------- image paths
def img2img(g: Graph, inpaint: bool = False, soft: int = 0) -> list:
    """Frame two of a 64x128 canvas re-noised (mask on frame two, denoise 0.6); returns the encoded canvas."""
    canvas = g.add("DSDTest_Image", batch=1, height=64, width=128, seed=9)
    mask = g.add("DSDTestCompat_HalfMask", height=64, width=128, soft=soft)
    g.denoise = 0.6
    encoded = g.add("VAEEncode", pixels=canvas, vae=["vae", 0])
    if inpaint:
        node = g.add("InpaintModelConditioning", positive=g.positive, negative=g.negative, vae=["vae", 0], pixels=canvas,
                     mask=mask, noise_mask=True)  # fmt: skip
        g.positive, g.negative, g.latent = node, [node[0], 1], [node[0], 2]
    else:
        g.latent = g.add("SetLatentNoiseMask", samples=encoded, mask=mask)
    return encoded


@pytest.mark.slow
@pytest.mark.parametrize("inpaint", [False, True], ids=["SetLatentNoiseMask", "InpaintModelConditioning"])
@covers("SetLatentNoiseMask", "InpaintModelConditioning")
def test_img2img_on_frame_two(sample, inpaint):
    g = Graph()
    encoded = img2img(g, inpaint)
    out, start = sample(g, also=encoded)
    assert diff(out[..., :8], start[..., :8]) < 1e-4, "frame one must keep the reference canvas"
    assert diff(out[..., 8:], start[..., 8:]) > CHANGED


@pytest.mark.slow
@covers("DifferentialDiffusion")
def test_differential_diffusion(sample, alone):
    g = Graph()
    g.patch("DifferentialDiffusion", strength=1.0)
    assert diff(sample(g), alone[2.0]) < EQ, "without a noise mask it has nothing to do"
    g, plain = Graph(), Graph()
    img2img(g, soft=1), img2img(plain, soft=1)
    g.patch("DifferentialDiffusion", strength=1.0)
    assert diff(sample(g), sample(plain)) > CHANGED


@pytest.mark.slow
@covers("HiResPass")
def test_hires_pass_on_frame_two(sample):
    g = Graph()
    frame_two = g.add("LatentCrop", samples=["sample", 0], width=64, height=64, x=64, y=0)
    up = g.add("LatentUpscaleBy", samples=frame_two, upscale_method="bislerp", scale_by=2.0)
    hires = g.add("KSampler", model=["flux", 0], seed=3, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple",
                  positive=["pos", 0], negative=["neg", 0], latent_image=up, denoise=0.4)  # fmt: skip
    out, upscaled = sample(g, also=up, source=hires)
    assert out.shape == upscaled.shape == (1, 16, 16, 16)
    assert torch.isfinite(out).all() and diff(out, upscaled) > CHANGED


@pytest.mark.slow
@covers("StyleModelApply")
def test_style_model_on_dsd_conditioning(sample, alone):
    # no neutral check: attn_bias at strength 0 (a -inf bias) gives NaN with plain FLUX too (core ComfyUI 0.8.0)
    for strength, kind, same in ((1.0, "multiply", False), (0.5, "attn_bias", False)):
        g = Graph()
        g.positive = g.add("StyleModelApply", conditioning=g.positive, style_model=g.add("DSDTestCompat_StyleModel"),
                           clip_vision_output=g.add("DSDTestCompat_VisionOutput"), strength=strength, strength_type=kind)  # fmt: skip
        d = diff(sample(g), alone[2.0])
        print(f"StyleModelApply {kind} {strength}: max abs change {d:.3e}")
        assert (d < EQ) if same else (d > CHANGED), f"StyleModelApply {kind} {strength}: {d:.3e}"


# ---------------------------------------------------------------- the README table
def test_readme_table_is_the_matrix():
    assert set(compat_rows.ROWS) == COVERED, "every README row is proven by a test here, and only those"
    table = compat_rows.readme_table(compat_rows.README.read_text(encoding="utf-8"))
    assert table == compat_rows.render(), "README compatibility table is stale: python -m tests.comfyui.compat_rows"


# ---------------------------------------------------------------- test-only nodes and files
@pytest.fixture(scope="module")
def compat_nodes(comfy_host, models_dir, tiny_weights):
    """``loras/style_lora.safetensors`` (another LoRA: a style) and the DSDTestCompat_* nodes."""
    from safetensors.torch import save_file

    from dsd.tiny import make_tiny_lora
    from dsd.weights.lora import lora_to_state_dict

    style = make_tiny_lora(tiny_weights.base.transformer, rank=4, seed=11)
    save_file(lora_to_state_dict(style), str(models_dir.root / "loras" / "style_lora.safetensors"))
    for name, cls in _test_nodes().items():
        comfy_host.nodes.NODE_CLASS_MAPPINGS[name] = cls
    return PROBE


PROBE: list = []


def _node(returns: tuple, required: dict, run):
    return type("CompatNode", (), {"CATEGORY": "DSD/testing", "RETURN_TYPES": returns, "FUNCTION": "run",
                                   "INPUT_TYPES": classmethod(lambda cls: {"required": required}), "run": run})  # fmt: skip


def _test_nodes() -> dict:
    def half_mask(self, height, width, soft):
        mask = torch.zeros(1, height, width)
        mask[:, :, width // 2 :] = torch.linspace(0.3, 1.0, width - width // 2) if soft else 1.0  # frame two
        return (mask,)

    def style_model(self):
        import comfy.ldm.flux.redux
        import comfy.sd

        redux = comfy.ldm.flux.redux.ReduxImageEncoder(redux_dim=8, txt_in_features=32)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():  # comfy.ops layers skip weight init: fill them
            for param in redux.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
        return (comfy.sd.StyleModel(redux),)

    def vision_output(self):
        import comfy.clip_vision

        out = comfy.clip_vision.Output()
        out["last_hidden_state"] = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(4))
        return (out,)

    def probe(self, model):
        def record(args):  # every pre-CFG call: the branch outputs as the guider hands them over
            PROBE.append([t.detach().clone() for t in args["conds_out"]])
            return args["conds_out"]

        m = model.clone()
        m.set_model_sampler_pre_cfg_function(record)
        return (m,)

    size = ("INT", {"default": 64, "min": 8, "max": 4096})
    return {
        "DSDTestCompat_HalfMask": _node(("MASK",), {"height": size, "width": size, "soft": ("INT", {"default": 0, "min": 0, "max": 1})}, half_mask),
        "DSDTestCompat_StyleModel": _node(("STYLE_MODEL",), {}, style_model),
        "DSDTestCompat_VisionOutput": _node(("CLIP_VISION_OUTPUT",), {}, vision_output),
        "DSDTestCompat_Probe": _node(("MODEL",), {"model": ("MODEL",)}, probe),
    }
