"""Multi-reference DSD in the standalone sampler, against a reference forward written here.

The reference forward spells the method out with nothing from the pipeline but the frozen encoders:
a row canvas of k + 1 frames built by hand, FLUX ids (0, row, col) over the WHOLE canvas built by
hand, condition tokens = the packed VAE latent of that canvas, and the image-unconditioned branch of
true CFG with every condition token zero. k = 1 is also compared with today's generate, bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dsd.__main__ import main as dsd_main
from dsd.canvas import CanvasLayout, canvas_to_image01, fit_reference, to_rgb01
from dsd.convert import convert_release
from dsd.pipeline import DSDPipeline
from dsd.sampler import GuidanceConfig, make_noise
from dsd.tokens import flux_sigmas, pack, unpack
from dsd.weights.adapter import load_adapter, references_metadata, save_adapter

pytestmark = pytest.mark.slow
FRAME = 48  # pixel frame side: 3x3 tokens per frame
S_I, S_T, STEPS, SEED = 2.0, 1.5, 3, 5


@pytest.fixture(scope="module")
def pipe(tiny_files):
    return DSDPipeline.from_local(tiny_files.flux_dir, release=tiny_files.release_dir)


def _refs(k: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    return [torch.rand(1, 60 + 8 * i, 56, 3, generator=gen) for i in range(k)]


def _hand_canvas(refs: list[torch.Tensor]) -> torch.Tensor:
    frames = [fit_reference(to_rgb01(r), FRAME, FRAME) * 2 - 1 for r in refs]
    return torch.cat([*frames, torch.full_like(frames[0], -1.0)], dim=-1)


def _hand_ids(rows: int, cols: int) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([torch.zeros_like(r), r, c], -1).reshape(-1, 3).float()


def _reference_forward(pipe: DSDPipeline, refs: list[torch.Tensor], prompt: str) -> torch.Tensor:
    canvas = _hand_canvas(refs)
    cond = pack(pipe.encoders.encode_canvas(canvas))
    h, w = canvas.shape[-2] // 8, canvas.shape[-1] // 8
    ids = _hand_ids(h // 2, w // 2)
    text, neg = pipe.encode_prompt([prompt]), pipe.encode_prompt([""])
    txt_ids = torch.zeros(text.prompt_embeds.shape[1], 3)
    model = pipe.model

    def pred(x, c, t, sigma):
        return model(x, c, t.prompt_embeds, t.pooled, sigma.expand(1), ids, txt_ids, torch.full((1,), 3.5))

    x = pack(make_noise(1, h, w, SEED))
    sig = flux_sigmas(STEPS, x.shape[1])
    for i in range(STEPS):
        v = pred(x, cond, text, sig[i])
        if i >= 2:
            e_t0, e_00 = pred(x, cond, neg, sig[i]), pred(x, torch.zeros_like(cond), neg, sig[i])
            v = e_00 + S_I * (e_t0 - e_00) + S_T * (v - e_t0)
        x = x + (sig[i + 1] - sig[i]) * v
    return x


def _generate(pipe, reference, layout=None):
    layout = layout or CanvasLayout(height=FRAME, width=2 * FRAME)
    return pipe.generate(reference, "a red fox", layout=layout, steps=STEPS, seed=SEED, progress=False,
                         guidance=GuidanceConfig(image_guidance=S_I, text_guidance=S_T))  # fmt: skip


def _todays_generate(pipe: DSDPipeline, reference, layout: CanvasLayout) -> torch.Tensor:
    """generate's token path as it was before multi-reference DSD (commit efdfba9), for one image."""
    from dsd.sampler import sample_tokens
    from dsd.tokens import image_ids, text_ids

    ref01 = to_rgb01(reference)
    canvas = torch.full((1, 3, layout.height, layout.width), -1.0)
    canvas[..., : layout.width // 2] = fit_reference(ref01, layout.height, layout.width // 2) * 2.0 - 1.0
    latent = pipe.encode_canvas(canvas)
    h, w = latent.shape[-2:]
    text, neg = pipe.encode_prompt(["a red fox"]), pipe.encode_prompt([""])
    return sample_tokens(pipe.model, pack(make_noise(1, h, w, SEED)), pack(latent), text, image_ids(h, w),
                         text_ids(text.prompt_embeds.shape[1]), steps=STEPS, negative_text=neg,
                         guidance=GuidanceConfig(image_guidance=S_I, text_guidance=S_T))  # fmt: skip


@torch.no_grad()
def test_one_reference_is_todays_generate_bit_for_bit(pipe):
    ref = _refs(1)[0]
    layout = CanvasLayout(height=FRAME, width=2 * FRAME)
    today = _todays_generate(pipe, ref, layout)
    for reference in (ref, [ref]):
        result = _generate(pipe, reference, layout)
        assert torch.equal(result.tokens, today)
        assert result.stats.predictions_per_step == [1, 1, 3]
        assert len(result.frames) == 2 and torch.equal(result.frames[1], result.frame_two)
    torch.testing.assert_close(today, _reference_forward(pipe, [ref], "a red fox"), rtol=0, atol=1e-5)


class _Spy:
    """What the transformer and the condition embedder are given, through forward pre-hooks."""

    def __init__(self, model):
        self.ids, self.cond = [], []
        model.transformer.register_forward_pre_hook(lambda m, a, kw: self.ids.append(kw["img_ids"].clone()), with_kwargs=True)
        model.c_embedder.register_forward_pre_hook(lambda m, a: self.cond.append(a[0].clone()))


@pytest.mark.parametrize("k", [2, 3])
@torch.no_grad()
def test_k_references_match_the_reference_forward(tiny_files, k):
    pipe = DSDPipeline.from_local(tiny_files.flux_dir, release=tiny_files.release_dir)  # own model: hooks stay here
    spy = _Spy(pipe.model)
    refs = _refs(k)
    result = _generate(pipe, refs)
    assert result.canvas.shape == (1, 3, FRAME, (k + 1) * FRAME)
    assert len(result.frames) == k + 1 and torch.equal(result.frame_two, result.frames[-1])
    torch.testing.assert_close(result.tokens, _reference_forward(pipe, refs, "a red fox"), rtol=0, atol=1e-5)
    ids = _hand_ids(FRAME // 16, (k + 1) * FRAME // 16)
    assert all(torch.equal(seen.cpu(), ids) for seen in spy.ids)  # positions over the whole canvas
    assert int(ids[:, 2].max()) == (k + 1) * 3 - 1
    cond = pack(pipe.encoders.encode_canvas(_hand_canvas(refs)))
    assert torch.equal(spy.cond[0], cond)  # condition tokens: every reference frame and the black target
    e_full, e_t0, e_00 = spy.cond[2].chunk(3)
    assert torch.equal(e_full, cond) and torch.equal(e_t0, cond)
    assert torch.equal(e_00, torch.zeros_like(cond))  # ALL references dropped together
    decoded = canvas_to_image01(pipe.decode_latent(unpack(result.tokens, FRAME // 8, (k + 1) * FRAME // 8)))
    assert torch.equal(decoded, result.canvas)


@torch.no_grad()
def test_more_references_than_trained_warns_not_fails(tiny_files, tmp_path, caplog):
    adapter = tmp_path / "k1.safetensors"
    convert_release(tiny_files.release_dir / "transformer", adapter, progress=False)
    pipe = DSDPipeline.from_local(tiny_files.flux_dir, adapter=adapter)
    assert pipe.trained_references == [1]
    with caplog.at_level("WARNING"):
        result = pipe.generate(_refs(2), "a fox", layout=CanvasLayout(height=32, width=64), steps=1, progress=False)
    assert "trained with at most 1" in caplog.text and result.canvas.shape[-1] == 96
    multi = tmp_path / "k123.safetensors"
    save_adapter(load_adapter(adapter), multi, references_metadata([1, 2, 3]))
    pipe = DSDPipeline.from_local(tiny_files.flux_dir, adapter=multi)
    caplog.clear()
    with caplog.at_level("WARNING"):
        pipe.generate(_refs(3), "a fox", layout=CanvasLayout(height=32, width=64), steps=1, progress=False)
    assert pipe.trained_references == [1, 2, 3] and "trained with at most" not in caplog.text


def test_generate_cli_repeated_ref(tiny_files, tmp_path, capsys):
    paths = []
    for i, colour in enumerate([(200, 40, 40), (40, 200, 40)]):
        paths.append(tmp_path / f"ref{i}.png")
        Image.new("RGB", (96, 80), colour).save(paths[-1])
    common = ["generate", "--flux", str(tiny_files.flux_dir), "--release", str(tiny_files.release_dir), "--prompt", "a cat",
              "--steps", "1", "--width", "64", "--height", "32", "--device", "cpu", "--dtype", "float32", "--keep-canvas"]  # fmt: skip
    assert dsd_main([*common, "--ref", str(paths[0]), "--ref", str(paths[1]), "--out", str(tmp_path / "two")]) == 0
    assert "trained with at most 1" in capsys.readouterr().err  # the authors' release is one-reference DSD
    assert Image.open(tmp_path / "two" / "canvas_seed0.png").size == (96, 32)
    assert Image.open(tmp_path / "two" / "frame_ref2_seed0.png").size == (32, 32)
    assert dsd_main([*common, "--ref", str(paths[0]), "--out", str(tmp_path / "one")]) == 0
    assert Image.open(tmp_path / "one" / "canvas_seed0.png").size == (64, 32)
    assert not (tmp_path / "one" / "frame_ref2_seed0.png").exists()
    assert '"ref": "' in (tmp_path / "one" / "settings_seed0.json").read_text()  # one --ref: settings as before
