"""The one image-reading rule (dsd/images.py) on real files: an EXIF-rotated JPEG, an RGBA cut-out, a 16-bit
PNG, a palette PNG with transparency, CMYK and LA; and every reader of the project giving the same pixels."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsd.images import UnreadableImage, read_image, upright_size

REPO = Path(__file__).resolve().parents[2]
RED, BLUE = (220, 30, 30), (30, 30, 220)


def halves(width: int = 96, height: int = 48) -> Image.Image:
    """Left half red, right half blue."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = RED
    arr[:, width // 2 :] = BLUE
    return Image.fromarray(arr)


def rotated_jpeg(path: Path) -> Path:
    """A JPEG stored sideways with EXIF Orientation 6 ("rotate 90 degrees clockwise to view"), as phones write."""
    exif = Image.Exif()
    exif[0x0112] = 6
    halves().save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def _colour(image: Image.Image, box) -> np.ndarray:
    return np.asarray(image.crop(box), dtype=float).reshape(-1, 3).mean(0)


def test_exif_orientation_is_applied(tmp_path):
    path = rotated_jpeg(tmp_path / "phone.jpg")
    with Image.open(path) as raw:
        assert raw.size == (96, 48) and raw.getexif()[0x0112] == 6  # the file really is stored sideways
        assert upright_size(raw) == (48, 96)
    image = read_image(path)
    assert image.mode == "RGB" and image.size == (48, 96)
    top, bottom = _colour(image, (0, 0, 48, 40)), _colour(image, (0, 56, 48, 96))
    assert top[0] > 180 and top[2] < 80 and bottom[2] > 180 and bottom[0] < 80  # the left (red) half is now on top


def test_alpha_is_composited_on_white_whatever_colour_transparent_pixels_hold(tmp_path):
    arr = np.zeros((32, 32, 4), np.uint8)  # transparent black everywhere ...
    arr[8:24, 8:24] = (10, 200, 10, 255)  # ... around an opaque green square
    arr[0:4, 0:4] = (0, 0, 0, 128)  # half transparent black: mid grey on white
    Image.fromarray(arr, "RGBA").save(tmp_path / "cutout.png")
    image = np.asarray(read_image(tmp_path / "cutout.png"))
    assert (image[30, 30] == 255).all() and tuple(image[16, 16]) == (10, 200, 10)
    assert 120 <= image[1, 1, 0] <= 135
    Image.fromarray(arr, "RGBA").convert("LA").save(tmp_path / "la.png")
    assert (np.asarray(read_image(tmp_path / "la.png"))[30, 30] == 255).all()


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257 * 128, 65535, 1000]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as raw:
        assert raw.mode.startswith("I")  # Pillow keeps the 16-bit values
    image = np.asarray(read_image(tmp_path / "deep.png"))
    assert image.shape == (4, 4, 3) and image[0, :, 0].tolist() == [0, 128, 255, 4]


def test_palette_with_transparency_and_cmyk(tmp_path):
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 250, 120, 0] + [0] * 762)
    pal.paste(1, (4, 4, 12, 12))
    pal.save(tmp_path / "pal.png", transparency=0)
    image = np.asarray(read_image(tmp_path / "pal.png"))
    assert tuple(image[0, 0]) == (255, 255, 255) and tuple(image[8, 8]) == (250, 120, 0)
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    rgb = np.asarray(read_image(tmp_path / "cmyk.jpg"), dtype=int)
    assert rgb[4, 4, 0] > 200 and rgb[4, 4, 1] < 60


def test_bytes_and_unreadable_files(tmp_path):
    data = rotated_jpeg(tmp_path / "p.jpg").read_bytes()
    assert read_image(data).size == (48, 96)
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    with pytest.raises(UnreadableImage, match="bad.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(UnreadableImage, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_every_reader_of_the_project_follows_the_rule(tmp_path):
    from datagen.vlm_view import read_rgb
    from dsd.eval.judge import encode_image
    from dsd.eval.stages import _open
    from training.data import PairRef, _decode, target_size

    path = rotated_jpeg(tmp_path / "phone.jpg")
    want = np.asarray(read_image(path))
    for reader in (read_rgb, _open, lambda p: _decode(Path(p).read_bytes(), "x")):
        assert np.array_equal(np.asarray(reader(path)), want)
    # a small JPEG is normally sent to the judge as it is; a rotated one is turned upright first
    with Image.open(io.BytesIO(encode_image(path))) as sent:
        assert sent.size == (48, 96)
    import tarfile

    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tf:
        for name, payload in (("k.ref.png", b""), ("k.target.jpg", path.read_bytes()), ("k.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    from training.data import scan_tar

    ref = scan_tar(shard)[0]
    assert isinstance(ref, PairRef) and target_size(ref) == (48, 96)  # the bucket is picked for the upright picture
    from datagen.dataset import _png_bytes

    with Image.open(io.BytesIO(_png_bytes(path, "panel"))) as stored:  # the dataset stage's JPEG -> PNG
        assert stored.format == "PNG" and np.array_equal(np.asarray(stored.convert("RGB")), want)


@pytest.mark.slow
def test_generate_ref_honours_exif(tmp_path):
    """``dsd generate --ref`` draws the same picture from a sideways-stored phone JPEG as from the upright one."""
    from dsd.tiny import make_tiny

    tiny = make_tiny(tmp_path / "tiny")
    upright = tmp_path / "upright.png"
    read_image(rotated_jpeg(tmp_path / "phone.jpg")).save(upright)
    outs = []
    for ref in (tmp_path / "phone.jpg", upright):
        out = tmp_path / ref.stem
        cmd = [sys.executable, "-m", "dsd", "generate", "--flux", str(tiny.flux_dir), "--release", str(tiny.release_dir),
               "--ref", str(ref), "--prompt", "a cat", "--steps", "2", "--width", "128", "--height", "64", "--seed", "1",
               "--device", "cpu", "--dtype", "float32", "--out", str(out), "--no-progress"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(np.asarray(Image.open(out / "frame_two_seed1.png"), dtype=int))
    assert np.abs(outs[0] - outs[1]).max() <= 1
