"""Packing, ids, schedule and the two-frame canvas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dsd.canvas import CanvasLayout, ReferenceImageError, compose_canvas, split_canvas, to_rgb01
from dsd.tiny import FLUX_SCHEDULER_CONFIG
from dsd.tokens import CanvasSizeError, check_pixel_size, flux_sigmas, image_ids, pack, unpack


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3),
    c=st.integers(1, 17),
    hp=st.integers(1, 9),
    wp=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_pack_unpack_round_trip(b, c, hp, wp, seed):
    x = torch.randn(b, c, 2 * hp, 2 * wp, generator=torch.Generator().manual_seed(seed))
    tokens = pack(x)
    assert tokens.shape == (b, hp * wp, 4 * c)
    assert torch.equal(unpack(tokens, 2 * hp, 2 * wp), x)
    # channel order (c ph pw): token 0 holds the top-left 2x2 patch of channel 0 first
    assert torch.equal(tokens[0, 0, :4], x[0, 0, :2, :2].reshape(4))


def test_pack_matches_diffusers():
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    x = torch.randn(2, 16, 6, 10)
    assert torch.equal(pack(x), FluxPipeline._pack_latents(x, 2, 16, 6, 10))
    assert torch.equal(unpack(pack(x), 6, 10), FluxPipeline._unpack_latents(pack(x), 48, 80, 8))


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 2000), w=st.integers(1, 2000))
def test_sizes_not_multiple_of_16_rejected(h, w):
    if h % 16 == 0 and w % 16 == 0:
        check_pixel_size(h, w)
        CanvasLayout(height=h, width=w)
        return
    with pytest.raises(CanvasSizeError, match="multiple of 16"):
        CanvasLayout(height=h, width=w)


def test_odd_latent_rejected():
    with pytest.raises(CanvasSizeError, match="even"):
        pack(torch.zeros(1, 16, 3, 4))
    with pytest.raises(CanvasSizeError):
        unpack(torch.zeros(1, 5, 64), 4, 4)


@pytest.mark.parametrize("h,w", [(2, 2), (8, 16), (64, 128), (14, 6)])
def test_image_ids_equal_diffusers(h, w):
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    ref = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, torch.device("cpu"), torch.float32)
    assert torch.equal(image_ids(h, w), ref)


@pytest.mark.parametrize("steps,seq", [(28, 2048), (4, 32), (1, 256), (50, 4096), (10, 7000)])
def test_flux_sigmas_equal_diffusers(steps, seq):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    cfg = FLUX_SCHEDULER_CONFIG
    sched = FlowMatchEulerDiscreteScheduler(**cfg)
    mu = calculate_shift(seq, cfg["base_image_seq_len"], cfg["max_image_seq_len"], cfg["base_shift"], cfg["max_shift"])
    retrieve_timesteps(sched, steps, "cpu", sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    ours = flux_sigmas(steps, seq)
    assert ours.shape == sched.sigmas.shape == (steps + 1,)
    torch.testing.assert_close(ours, sched.sigmas.float(), rtol=0, atol=1e-6)
    assert ours[-1] == 0


# -- image inputs ---------------------------------------------------------------------------


def _rgb_ref(h=64, w=64, color=(0.2, 0.5, 0.8)):
    return torch.tensor(color).view(1, 3, 1, 1).expand(1, 3, h, w).clone()


def test_rgba_composited_over_white():
    arr = np.zeros((40, 40, 4), np.uint8)
    arr[..., 0] = 255
    arr[:, :20, 3] = 255  # left opaque red, right transparent
    x = to_rgb01(Image.fromarray(arr, "RGBA"))
    assert x.shape == (1, 3, 40, 40)
    assert torch.equal(x[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(x[0, :, 0, 39], torch.tensor([1.0, 1.0, 1.0]))


def test_grayscale_and_la():
    g = np.full((40, 50), 51, np.uint8)
    x = to_rgb01(Image.fromarray(g, "L"))
    assert x.shape == (1, 3, 40, 50)
    torch.testing.assert_close(x, torch.full_like(x, 0.2))
    la = Image.fromarray(np.stack([g, np.zeros_like(g)], -1), "LA")  # fully transparent -> white
    assert torch.equal(to_rgb01(la), torch.ones(1, 3, 40, 50))


def test_16_bit_inputs():
    arr = np.full((40, 48), 65535 // 5, np.uint16)
    x = to_rgb01(arr)
    assert x.shape == (1, 3, 40, 48)
    torch.testing.assert_close(x, torch.full_like(x, (65535 // 5) / 65535.0))
    pil16 = Image.fromarray(arr).convert("I;16") if Image.fromarray(arr).mode != "I;16" else Image.fromarray(arr)
    assert pil16.mode == "I;16"
    torch.testing.assert_close(to_rgb01(pil16), x)
    # Pillow hands many 16-bit files over as 32-bit mode "I" with 16-bit values
    pil_i = Image.fromarray(arr.astype(np.int32))
    assert pil_i.mode == "I"
    torch.testing.assert_close(to_rgb01(pil_i), x)
    rgb16 = np.full((40, 48, 3), 65535, np.uint16)
    assert torch.equal(to_rgb01(rgb16), torch.ones(1, 3, 40, 48))


def test_comfy_image_layout_and_batch():
    img = torch.rand(3, 64, 48, 3)  # ComfyUI IMAGE [B, H, W, C]
    x = to_rgb01(img)
    assert x.shape == (3, 3, 64, 48)
    assert torch.equal(x, img.permute(0, 3, 1, 2))
    layout = CanvasLayout(height=64, width=128)
    canvas = compose_canvas(img, layout)
    assert canvas.shape == (3, 3, 64, 128)
    for i in range(3):  # each reference lands in its own canvas
        single = compose_canvas(img[i : i + 1], layout)
        assert torch.equal(canvas[i : i + 1], single)


def test_frame_two_exactly_black():
    layout = CanvasLayout(height=64, width=128)
    canvas = compose_canvas(torch.rand(2, 80, 80, 3), layout)
    one, two = split_canvas(canvas, layout)
    assert one.shape == two.shape == (2, 3, 64, 64)
    assert torch.equal(two, torch.full_like(two, -1.0))
    assert canvas.min() >= -1 and canvas.max() <= 1


def test_tiny_reference_rejected():
    with pytest.raises(ReferenceImageError, match="32"):
        compose_canvas(torch.rand(1, 31, 100, 3), CanvasLayout(height=64, width=128))


def test_crop_keeps_the_centre():
    # 192x64 reference: thirds red | green | blue; a square crop keeps the green middle
    ref = torch.zeros(1, 3, 64, 192)
    ref[:, 0, :, :64] = 1
    ref[:, 1, :, 64:128] = 1
    ref[:, 2, :, 128:] = 1
    canvas = compose_canvas(ref, CanvasLayout(height=64, width=128, fit="crop"))
    frame = (canvas[0, :, :, :64] + 1) / 2
    torch.testing.assert_close(frame, torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand_as(frame))


def test_crop_of_a_tall_reference_keeps_the_middle_rows():
    ref = torch.zeros(1, 3, 192, 64)
    ref[:, :, 64:128] = 1  # white band in the middle third
    frame = (compose_canvas(ref, CanvasLayout(height=64, width=128))[0, :, :, :64] + 1) / 2
    torch.testing.assert_close(frame, torch.ones_like(frame))


def test_pad_letterboxes_with_white():
    ref = torch.zeros(1, 3, 64, 128)  # black 2:1 reference into a square frame -> 64x32 centred
    canvas = compose_canvas(ref, CanvasLayout(height=64, width=128, fit="pad", pad_value=1.0))
    frame = (canvas[0, :, :, :64] + 1) / 2
    assert torch.equal(frame[:, :16], torch.ones(3, 16, 64))
    assert torch.equal(frame[:, 48:], torch.ones(3, 16, 64))
    assert torch.equal(frame[:, 16:48], torch.zeros(3, 32, 64))


def test_stretch_maps_halves_to_halves():
    ref = torch.zeros(1, 3, 32, 256)
    ref[:, 0, :, :128] = 1  # left half red
    ref[:, 2, :, 128:] = 1  # right half blue
    frame = (compose_canvas(ref, CanvasLayout(height=64, width=128, fit="stretch"))[0, :, :, :64] + 1) / 2
    torch.testing.assert_close(frame[:, :, :28], torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 64, 28), atol=1e-4, rtol=0)
    torch.testing.assert_close(frame[:, :, 36:], torch.tensor([0, 0, 1.0]).view(3, 1, 1).expand(3, 64, 28), atol=1e-4, rtol=0)


def test_marker_ends_where_expected():
    # a 16x16 white marker at the top-left of a black 128x128 reference lands at the top-left
    # eighth of a 64x64 frame (scale 1/2)
    ref = torch.zeros(1, 3, 128, 128)
    ref[..., :16, :16] = 1
    frame = (compose_canvas(ref, CanvasLayout(height=64, width=128))[0, :, :, :64] + 1) / 2
    assert frame[:, 1:7, 1:7].min() > 0.95
    assert frame[:, 10:, :].max() < 0.05 and frame[:, :, 10:].max() < 0.05


# -- the authors' preprocessing, exactly ------------------------------------------------------------


def _authors_frame(image: Image.Image, size: int = 512) -> np.ndarray:
    """The authors' script, step by step: centre square of side min(w, h), PIL bicubic resize on uint8."""
    w, h = image.size
    m = min(w, h)
    image = image.crop(((w - m) // 2, (h - m) // 2, (w + m) // 2, (h + m) // 2))
    return np.asarray(image.resize((size, size), Image.BICUBIC))


def _photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradients + noise + hard edges: every resampling difference shows up somewhere."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1), (xx ^ yy) & 255], -1).astype(np.int32)
    arr += rng.integers(-40, 41, arr.shape)
    arr[height // 3 : height // 2, width // 4 : width // 3] = [255, 0, 0]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _frame_bytes(canvas: torch.Tensor, frame_width: int) -> np.ndarray:
    frame = (canvas[0, :, :, :frame_width] + 1.0) / 2.0
    return (frame.permute(1, 2, 0) * 255.0).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("size", [(700, 433), (433, 700), (513, 512), (512, 512), (1001, 999)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_default_crop_is_the_authors_preprocessing(size):
    image = _photo_like(*size)
    expected = _authors_frame(image)
    layout = CanvasLayout()  # the defaults: 512x1024, crop
    got_pil = _frame_bytes(compose_canvas(image, layout), layout.frame_width)  # standalone sampler: a PIL image
    assert int(np.abs(got_pil.astype(int) - expected.astype(int)).max()) == 0
    # the node path: ComfyUI's LoadImage hands over float32 uint8/255, [B, H, W, C]
    comfy_image = torch.from_numpy(np.asarray(image).astype(np.float32) / 255.0)[None]
    got_node = _frame_bytes(compose_canvas(comfy_image, layout), layout.frame_width)
    assert np.array_equal(got_node, expected)


def test_crop_on_a_smaller_canvas_resizes_to_the_frame_size():
    image = _photo_like(700, 433, seed=1)
    layout = CanvasLayout(height=64, width=128)
    assert np.array_equal(_frame_bytes(compose_canvas(image, layout), 64), _authors_frame(image, 64))


def test_crop_values_are_exact_8_bit_levels():
    frame = (compose_canvas(_photo_like(300, 200), CanvasLayout(height=64, width=128))[0, :, :, :64] + 1) / 2
    levels = frame * 255.0
    assert torch.allclose(levels, levels.round(), atol=1e-3)
