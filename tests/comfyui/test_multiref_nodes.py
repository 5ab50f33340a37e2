"""Multi-reference DSD in the real ComfyUI executor: k pictures of one subject -> one canvas of k + 1 frames.

- k = 1 (DSD Reference Conditioning) is today's canvas and tokens, bit for bit, checked against the two-frame
  canvas written out here as it was before multi-reference DSD; an old layout dict still works.
- k = 2 / 3 (DSD Multi-Reference Conditioning): layout, latent and tokens against the core's compose_canvas
  and, frame by frame, against fit_reference; DSD Split Canvas returns the target and every reconstruction.
- True CFG's image-unconditioned branch zeroes every reference frame together.
- More references than the adapter's ``dsd_train_references`` warn (log + DSD Guider's UI text; plain KSampler logs it
  too, once per sampling run), never fail.
- Bad inputs (NaN, tiny, mismatched batches, malformed layouts) are refused naming the input.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from dsd.canvas import CanvasLayout, compose_canvas, fit_reference, to_rgb01
from dsd.tokens import latent_to_model, pack, unpack

FRAME, HEIGHT = 64, 64
NODE = "DSDMultiReferenceConditioning"
NAN = float("nan")


def _image(seed: int, batch: int = 1, height: int = 72, width: int = 80) -> dict:
    return {"class_type": "DSDTest_Image", "inputs": {"batch": batch, "height": height, "width": width, "seed": seed}}


def image_tensor(seed: int, batch: int = 1, height: int = 72, width: int = 80) -> torch.Tensor:
    """What DSDTest_Image hands out for these inputs."""
    return torch.rand(batch, height, width, 3, generator=torch.Generator("cpu").manual_seed(seed))


def multi_graph(k: int, images: dict | None = None, batch_size: int = 1, frame_width: int = FRAME) -> dict:
    """Test images -> DSD Multi-Reference Conditioning, every output captured."""
    images = images or {f"image_{i}": _image(i) for i in range(1, k + 1)}
    graph = {f"in_{name}": node for name, node in images.items()}
    graph["text"] = {"class_type": "DSDTest_TextCond", "inputs": {"batch": 1, "seed": 0}}
    graph["vae"] = {"class_type": "DSDTest_TinyVAE", "inputs": {}}
    graph["cond"] = {"class_type": NODE, "inputs": {
        "positive": ["text", 0], "negative": ["text", 0], "vae": ["vae", 0], "frame_width": frame_width,
        "height": HEIGHT, "fit": "crop", "batch_size": batch_size, **{name: [f"in_{name}", 0] for name in images}}}  # fmt: skip
    for slot, label in enumerate(("positive", "negative", "latent", "layout")):
        graph[f"cap_{label}"] = {"class_type": "DSDTest_Capture", "inputs": {"label": label, "value": ["cond", slot]}}
    return json.loads(json.dumps(graph))


def encoded(vae, canvas: torch.Tensor) -> torch.Tensor:
    """ComfyUI's VAE + FLUX shift/scale + packing of a ``[-1, 1]`` canvas."""
    with torch.inference_mode():
        return pack(latent_to_model(vae.encode(((canvas + 1) / 2).permute(0, 2, 3, 1)).float()))


def tokens_of(conditioning) -> torch.Tensor:
    return conditioning[0][1]["model_conds"]["dsd_condition"].cond


def refused(run, node_type: str, *words: str) -> str:
    assert not run.ok and run.exec_error is not None, (run.error, run.node_errors)
    assert run.exec_error["node_type"] == node_type, run.exec_error
    message = run.exec_error["exception_message"]
    assert all(w in message for w in words), message
    return message


# ------------------------------------------------------------------ k = 1 is today's DSD
def two_frame_canvas(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The canvas exactly as DSD composed it before multi-reference: frame one the reference, frame two -1."""
    frame = fit_reference(to_rgb01(image), height, width // 2, "crop", 1.0)
    canvas = torch.full((image.shape[0], 3, height, width), -1.0)
    canvas[..., : width // 2] = frame * 2.0 - 1.0
    return canvas


def test_one_reference_is_unchanged_bit_for_bit(comfy_host, tiny_vae, text_cond):
    pos, _ = text_cond(1, seed=0)
    image = image_tensor(5, batch=2)
    p, n, latent, layout = comfy_host.call(
        "DSDReferenceConditioning", positive=pos, negative=pos, vae=tiny_vae.comfy, image=image, width=2 * FRAME,
        height=HEIGHT, fit="crop", batch_size=1,
    )  # fmt: skip
    assert torch.equal(tokens_of(p), encoded(tiny_vae.comfy, two_frame_canvas(image, HEIGHT, 2 * FRAME)))
    assert torch.equal(tokens_of(n), tokens_of(p)) and p[0][1]["model_conds"]["dsd_condition"].references == 1
    assert layout == {"height": HEIGHT, "width": 2 * FRAME, "fit": "crop", "pad_value": 1.0, "references": 1}
    assert latent["samples"].shape == (2, 16, HEIGHT // 8, 2 * FRAME // 8)
    # a layout saved before multi-reference DSD (no "references") splits the same way
    canvas = torch.rand(2, HEIGHT, 2 * FRAME, 3)
    old = {k: v for k, v in layout.items() if k != "references"}
    new_out, old_out = (comfy_host.call("DSDSplitCanvas", canvas=canvas, layout=lay) for lay in (layout, old))
    assert all(torch.equal(a, b) for a, b in zip(new_out, old_out, strict=True))
    assert torch.equal(new_out[0], canvas[:, :, FRAME:]) and torch.equal(new_out[1], canvas[:, :, :FRAME])


# ------------------------------------------------------------------ k = 2, 3: canvas, tokens, split
@pytest.mark.parametrize("k", [2, 3])
def test_multi_reference_canvas_and_tokens(run_prompt, test_nodes, tiny_vae, k):
    run = run_prompt(multi_graph(k))
    assert run.ok, (run.error, run.node_errors, run.exec_error)
    refs = [image_tensor(i) for i in range(1, k + 1)]
    layout = CanvasLayout.from_frame(HEIGHT, FRAME, references=k, fit="crop")
    assert run.captured["layout"] == layout.to_dict() and run.captured["layout"]["width"] == (k + 1) * FRAME
    assert run.captured["latent"]["samples"].shape == (1, 16, HEIGHT // 8, (k + 1) * FRAME // 8)
    canvas = compose_canvas(refs, layout)
    for i, ref in enumerate(refs):  # the core's canvas, frame by frame: reference i in frame i, in order
        frame = canvas[..., i * FRAME : (i + 1) * FRAME]
        assert torch.equal(frame, fit_reference(to_rgb01(ref), HEIGHT, FRAME, "crop", 1.0) * 2 - 1)
    assert torch.all(canvas[..., k * FRAME :] == -1.0)  # the target frame is black
    tokens = tokens_of(run.captured["positive"])
    assert tokens.shape == (1, (HEIGHT // 16) * (k + 1) * (FRAME // 16), 64)
    assert torch.equal(tokens, encoded(tiny_vae.comfy, canvas))
    assert torch.equal(tokens_of(run.captured["negative"]), tokens)
    assert run.captured["positive"][0][1]["model_conds"]["dsd_condition"].references == k


def test_split_canvas_returns_target_and_every_reconstruction(comfy_host):
    k = 3
    layout = CanvasLayout.from_frame(HEIGHT, FRAME, references=k).to_dict()
    canvas = torch.rand(2, HEIGHT, (k + 1) * FRAME, 3)
    result, recon, recons = comfy_host.call("DSDSplitCanvas", canvas=canvas, layout=layout)
    assert torch.equal(result, canvas[:, :, k * FRAME :]) and torch.equal(recon, canvas[:, :, :FRAME])
    expect = [canvas[b, :, i * FRAME : (i + 1) * FRAME] for b in range(2) for i in range(k)]  # canvas by canvas
    assert recons.shape == (2 * k, HEIGHT, FRAME, 3) and torch.equal(recons, torch.stack(expect))
    (hint,) = comfy_host.call("DSDControlHintToFrame", hint=torch.rand(1, 96, 96, 3), layout=layout)
    assert hint.shape == (1, HEIGHT, (k + 1) * FRAME, 3)
    assert torch.count_nonzero(hint[:, :, : k * FRAME]) == 0 and hint[:, :, k * FRAME :].mean() > 0.2


def test_one_picture_shared_by_a_batch_of_canvases(run_prompt, test_nodes, tiny_vae):
    images = {"image_1": _image(1, batch=3), "image_2": _image(2, batch=1)}
    run = run_prompt(multi_graph(2, images=images, batch_size=3))
    assert run.ok, run.exec_error
    tokens = tokens_of(run.captured["positive"])
    assert tokens.shape[0] == 3 and run.captured["latent"]["samples"].shape[0] == 3
    canvas = compose_canvas([image_tensor(1, batch=3), image_tensor(2)], CanvasLayout.from_frame(HEIGHT, FRAME, 2))
    assert torch.equal(canvas[0, ..., FRAME : 2 * FRAME], canvas[2, ..., FRAME : 2 * FRAME])  # image_2 in every canvas
    assert torch.equal(tokens, encoded(tiny_vae.comfy, canvas))


# ------------------------------------------------------------------ true CFG drops all references together
def _record_tokens(model, calls: list):
    import comfy.patcher_extension

    def record(executor, x, *args, **kwargs):
        calls.append(kwargs["dsd_condition"].detach().clone())
        return executor(x, *args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_record", record)
    return m


@pytest.mark.slow
def test_unconditioned_branch_zeroes_every_reference_frame(comfy_host, tiny_flux, tiny_vae, text_cond, models_dir):
    k = 2
    pos, _ = text_cond(1, seed=0)
    neg, _ = text_cond(1, seed=1)
    p, n, latent, _ = comfy_host.call(
        NODE, positive=pos, negative=neg, vae=tiny_vae.comfy, image_1=image_tensor(1), image_2=image_tensor(2),
        frame_width=FRAME, height=HEIGHT, fit="crop", batch_size=1,
    )  # fmt: skip
    calls: list = []
    with torch.inference_mode():
        (model,) = comfy_host.call("DSDAdapterLoader", model=_record_tokens(tiny_flux(), calls),
                                   adapter="tiny_adapter.safetensors", strength=1.0)  # fmt: skip
        (guider,) = comfy_host.call("DSDGuider", model=model, positive=p, negative=n, image_guidance=2.0,
                                    text_guidance=1.5, cfg_start_step=0)  # fmt: skip
        (sigmas,) = comfy_host.call("BasicScheduler", model=model, scheduler="simple", steps=2, denoise=1.0)
        (noise,) = comfy_host.call("RandomNoise", noise_seed=3)
        (sampler,) = comfy_host.call("KSamplerSelect", sampler_name="euler")
        out, _ = comfy_host.call("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                                 latent_image=latent)  # fmt: skip
    assert torch.isfinite(out["samples"]).all() and len(calls) == 2 and all(c.shape[0] == 3 for c in calls)
    full = tokens_of(p)[0]
    for branches in calls:  # e_full, e_t0 carry every reference frame; e_00 none of them
        zero = [b for b in branches if torch.count_nonzero(b) == 0]
        assert len(zero) == 1, "exactly one branch (the image-unconditioned one) has zero tokens"
        assert sum(torch.equal(b, full) for b in branches) == 2
        frames = unpack(zero[0][None], HEIGHT // 8, (k + 1) * FRAME // 8).split(FRAME // 8, dim=-1)
        assert all(torch.count_nonzero(f) == 0 for f in frames[:k])
    full_frames = unpack(full[None], HEIGHT // 8, (k + 1) * FRAME // 8).split(FRAME // 8, dim=-1)
    assert all(torch.count_nonzero(f) > 0 for f in full_frames)


# ------------------------------------------------------------------ the adapter's trained k
def guided_graph(k: int, adapter: str) -> dict:
    graph = multi_graph(k)
    for label in ("positive", "negative", "layout"):
        del graph[f"cap_{label}"]
    graph["flux"] = {"class_type": "DSDTest_TinyFlux", "inputs": {"kind": "flux"}}
    graph["dsd"] = {"class_type": "DSDAdapterLoader", "inputs": {"model": ["flux", 0], "adapter": adapter, "strength": 1.0}}
    graph["guider"] = {"class_type": "DSDGuider", "inputs": {
        "model": ["dsd", 0], "positive": ["cond", 0], "negative": ["cond", 1], "image_guidance": 1.0,
        "text_guidance": 1.0, "cfg_start_step": 0}}  # fmt: skip
    graph["cap_guider"] = {"class_type": "DSDTest_Capture", "inputs": {"label": "guider", "value": ["guider", 0]}}
    return graph


@pytest.fixture(scope="module")
def k3_adapter(models_dir, tiny_weights):
    from dsd.weights.adapter import references_metadata, save_adapter

    name = "tiny_adapter_k123.safetensors"
    save_adapter(tiny_weights.adapter, models_dir.root / "dsd" / name, extra_metadata=references_metadata([1, 2, 3]))
    return name


def test_more_references_than_trained_warn_in_log_and_node_text(run_prompt, test_nodes, models_dir, k3_adapter, caplog):
    with caplog.at_level(logging.WARNING):
        run = run_prompt(guided_graph(2, "tiny_adapter.safetensors"))  # no dsd_train_references: trained with k = 1
    assert run.ok, (run.error, run.node_errors, run.exec_error)
    (text,) = run.outputs["guider"]["text"]
    assert "2 references given" in text and "at most 1" in text and text.startswith("DSD Guider:")
    assert any("2 references given" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run = run_prompt(guided_graph(3, k3_adapter))
    assert run.ok, (run.error, run.node_errors, run.exec_error)
    assert "guider" not in run.outputs and not [r for r in caplog.records if "references given" in r.getMessage()]


# ------------------------------------------------------------------ bad input
def _nan_image() -> dict:
    return {"class_type": "ImageBlend", "inputs": {"image1": ["in_a", 0], "image2": ["in_b", 0], "blend_factor": NAN,
                                                   "blend_mode": "normal"}}  # fmt: skip


@pytest.mark.parametrize(
    ("images", "words"),
    [
        ({"image_1": _image(1), "image_2": "nan"}, ("image_2 holds", "NaN")),
        ({"image_1": _image(1), "image_2": _image(2), "image_3": _image(3, height=16, width=16)},
         ("image_3 is 16x16 pixels", "at least 32 px")),
        ({"image_1": _image(1, batch=2), "image_2": _image(2, batch=3)}, ("image_1=2, image_2=3",)),
    ],
    ids=["nan", "tiny", "batches"],
)
def test_bad_references_are_refused_naming_the_input(run_prompt, test_nodes, images, words):
    graph = multi_graph(len(images), images={n: (_image(1) if v == "nan" else v) for n, v in images.items()})
    if "nan" in images.values():
        graph.update(json.loads(json.dumps({"in_a": _image(7), "in_b": _image(8), "in_image_2": _nan_image()})))
    refused(run_prompt(graph), NODE, "DSD Multi-Reference Conditioning", *words)


@pytest.mark.parametrize(
    ("layout", "words"),
    [
        ({"height": 64, "width": 256, "references": 9}, ("references=9",)),
        ({"height": 64, "width": 200, "references": 2}, ("width=200",)),
        ({"height": 64, "width": 192, "references": NAN}, ("references=nan",)),
        ({"height": 64, "width": 192, "references": 2.5}, ("references=2.5",)),
    ],
    ids=["too-many", "width", "nan", "fraction"],
)
def test_multi_reference_layouts_from_json_are_checked(run_prompt, test_nodes, layout, words):
    graph = {"c": _image(1, height=64, width=192),
             "split": {"class_type": "DSDSplitCanvas", "inputs": {"canvas": ["c", 0], "layout": layout}},
             "cap": {"class_type": "DSDTest_Capture", "inputs": {"label": "out", "value": ["split", 2]}}}  # fmt: skip
    refused(run_prompt(json.loads(json.dumps(graph))), "DSDSplitCanvas", "not a DSD layout", *words)


def test_split_canvas_refuses_a_canvas_that_is_not_the_layouts(run_prompt, test_nodes):
    layout = CanvasLayout.from_frame(64, 64, references=2).to_dict()
    graph = {"c": _image(1, height=64, width=200),
             "split": {"class_type": "DSDSplitCanvas", "inputs": {"canvas": ["c", 0], "layout": layout}},
             "cap": {"class_type": "DSDTest_Capture", "inputs": {"label": "out", "value": ["split", 0]}}}  # fmt: skip
    refused(run_prompt(graph), "DSDSplitCanvas", "200 px wide", "3 frames")


def _reference_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "references given" in r.getMessage()]


def sampled_graph(k: int, adapter: str, guided: bool) -> dict:
    """k references -> DSD model -> KSampler (no DSD Guider), or DSD Guider -> SamplerCustomAdvanced; 2 steps."""
    graph = guided_graph(k, adapter)
    del graph["cap_guider"], graph["cap_latent"]
    if guided:
        graph.update({
            "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["dsd", 0], "scheduler": "simple", "steps": 2,
                                                                  "denoise": 1.0}},
            "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
            "sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "sample": {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0],
                "latent_image": ["cond", 2]}},
        })  # fmt: skip
    else:
        del graph["guider"]
        graph["sample"] = {"class_type": "KSampler", "inputs": {
            "model": ["dsd", 0], "positive": ["cond", 0], "negative": ["cond", 1], "latent_image": ["cond", 2],
            "seed": 3, "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}  # fmt: skip
    graph["cap_out"] = {"class_type": "DSDTest_Capture", "inputs": {"label": "out", "value": ["sample", 0]}}
    return graph


@pytest.mark.parametrize("guided", [False, True], ids=["ksampler", "dsd-guider"])
def test_too_many_references_warn_once_per_sampling_run(run_prompt, test_nodes, models_dir, k3_adapter, caplog, guided):
    """Plain KSampler (no DSD Guider) warns too, from the DSD model's OUTER_SAMPLE wrapper: once per run (2 steps,
    2 branches at KSampler's cfg), and never a second time when DSD Guider, which warns by itself, samples."""
    with caplog.at_level(logging.WARNING):
        run = run_prompt(sampled_graph(2, "tiny_adapter.safetensors", guided))
    assert run.ok, (run.error, run.node_errors, run.exec_error)
    assert torch.isfinite(run.captured["out"]["samples"]).all()
    (message,) = _reference_warnings(caplog)
    assert "2 references given" in message and "at most 1 (k = [1])" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run = run_prompt(sampled_graph(3, k3_adapter, guided))
    assert run.ok, (run.error, run.node_errors, run.exec_error)
    assert not _reference_warnings(caplog)
