"""Template thumbnails: one illustrated card per workflow, drawn with PIL (written by ``build_workflows.py``).

ComfyUI's frontend (1.35.9) shows a pack's ``workflows/<name>.json`` in its templates browser with the
file name as the title, the name with ``_`` as spaces as the description, and ``<name>.jpg`` beside it
as the picture (only ``.jpg``). The card therefore carries the readable part: the workflow's title and
one-line description, and what it does: the reference in frame one, the same subject in a new scene in
frame two, plus what the workflow adds (enhanced prompt, guidance scales, control hint, batch grid).

A workflow with no painter of its own here gets the generic card (reference -> result, its name and
description), so adding a graph to ``build_workflows.py`` gives it a real thumbnail at once; add a painter to
``EXTRAS`` to show what the new graph adds.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageFont, ImageOps

SIZE = 512
MAX_BYTES = 60_000  # the templates browser loads every card at once
FRAME, FRAME_Y, LEFT_X, RIGHT_X = 232, 150, 16, 264
BAND_Y = 420
BG, INK, MUTED, ACCENT = (23, 24, 28), (236, 238, 242), (170, 175, 186), (96, 165, 250)
TEAL, TEAL_LIGHT, HEART, GOLD = (38, 166, 154), (128, 203, 196), (229, 57, 53), (255, 202, 40)


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


# ---------------------------------------------------------------------------------- the subject
def robot(d: ImageDraw.ImageDraw, cx: int, cy: int, s: float = 1.0, prop: str | None = None, view: str = "front") -> None:
    """The subject whose identity the workflows preserve: a teal robot with a red heart and a gold antenna, and on
    its back a gold backpack with a white stripe (seen only from behind: what a second reference adds)."""
    def box(x0, y0, x1, y1):
        return [cx + x0 * s, cy + y0 * s, cx + x1 * s, cy + y1 * s]

    if view != "front":
        robot_other_side(d, box, s, view)
        return
    d.line(box(0, -62, 0, -48), fill=(90, 90, 90), width=max(1, int(3 * s)))
    d.ellipse(box(-7, -72, 7, -58), fill=GOLD)
    d.rounded_rectangle(box(-30, -48, 30, -8), radius=int(10 * s), fill=TEAL_LIGHT)
    for ex in (-13, 13):
        d.ellipse(box(ex - 8, -36, ex + 8, -20), fill=(255, 255, 255))
        d.ellipse(box(ex - 3, -31, ex + 3, -25), fill=(30, 30, 40))
    d.rounded_rectangle(box(-36, -4, 36, 56), radius=int(12 * s), fill=TEAL)
    d.polygon([tuple(box(-10, 14, 0, 0)[:2]), tuple(box(10, 14, 0, 0)[:2]), tuple(box(0, 30, 0, 0)[:2])], fill=HEART)
    d.ellipse(box(-11, 8, 1, 20), fill=HEART)
    d.ellipse(box(-1, 8, 11, 20), fill=HEART)
    for ax in (-46, 36):
        d.rounded_rectangle(box(ax, 2, ax + 10, 40), radius=int(5 * s), fill=TEAL)
    for lx in (-24, 8):
        d.rounded_rectangle(box(lx, 56, lx + 16, 78), radius=int(4 * s), fill=(60, 120, 115))
    if prop == "book":
        d.rectangle(box(-26, 22, 26, 44), fill=(245, 245, 235), outline=(120, 60, 40), width=max(1, int(3 * s)))
        d.line(box(0, 22, 0, 44), fill=(120, 60, 40), width=max(1, int(2 * s)))
    elif prop == "ball":
        d.ellipse(box(40, 58, 66, 84), fill=(250, 250, 250), outline=(30, 30, 30), width=max(1, int(2 * s)))
        d.regular_polygon((cx + 53 * s, cy + 71 * s, 5 * s), 5, fill=(30, 30, 30))
    elif prop == "sword":
        d.line(box(46, -30, 46, 30), fill=(200, 205, 215), width=max(1, int(5 * s)))
        d.line(box(38, 24, 54, 24), fill=GOLD, width=max(1, int(4 * s)))


def robot_other_side(d: ImageDraw.ImageDraw, box: Callable, s: float, view: str) -> None:
    """The robot from behind (``back``: the backpack) or in profile (``side``: backpack edge, one eye)."""
    half = 36 if view == "back" else 22
    d.line(box(0, -62, 0, -48), fill=(90, 90, 90), width=max(1, int(3 * s)))
    d.ellipse(box(-7, -72, 7, -58), fill=GOLD)
    d.rounded_rectangle(box(-half + 6, -48, half - 6, -8), radius=int(10 * s), fill=TEAL_LIGHT)
    d.rounded_rectangle(box(-half, -4, half, 56), radius=int(12 * s), fill=TEAL)
    for lx in ((-24, 8) if view == "back" else (-8,)):
        d.rounded_rectangle(box(lx, 56, lx + 16, 78), radius=int(4 * s), fill=(60, 120, 115))
    if view == "back":
        d.rounded_rectangle(box(-24, 2, 24, 46), radius=int(8 * s), fill=GOLD)
        d.rectangle(box(-24, 20, 24, 28), fill=(250, 250, 250))
        for ax in (-46, 36):
            d.rounded_rectangle(box(ax, 2, ax + 10, 40), radius=int(5 * s), fill=TEAL)
        return
    d.ellipse(box(6, -36, 20, -22), fill=(255, 255, 255))
    d.ellipse(box(12, -31, 18, -25), fill=(30, 30, 40))
    d.rounded_rectangle(box(-34, 2, -20, 46), radius=int(5 * s), fill=GOLD)  # the backpack's edge
    d.rounded_rectangle(box(-5, 2, 5, 40), radius=int(5 * s), fill=(30, 140, 130))


# ---------------------------------------------------------------------------------- scenes
def gradient(size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
    mask = Image.linear_gradient("L").resize(size)
    return Image.composite(Image.new("RGB", size, bottom), Image.new("RGB", size, top), mask)


def reference_frame(view: str = "front") -> Image.Image:
    img = gradient((FRAME, FRAME), (242, 240, 235), (214, 210, 202))
    d = ImageDraw.Draw(img)
    d.ellipse([70, 196, 162, 212], fill=(190, 186, 178))
    robot(d, FRAME // 2, 122, 1.1, view=view)
    return img


VIEWS = ("front", "back", "side")


def views_frame() -> Image.Image:
    """The three references of the multi-reference workflow in one frame: front on top, back and side below."""
    grid = Image.new("RGB", (FRAME, FRAME), BG)
    half = (FRAME - 4) // 2
    grid.paste(reference_frame("front").resize((half, half)), ((FRAME - half) // 2, 0))
    for i, view in enumerate(VIEWS[1:]):
        grid.paste(reference_frame(view).resize((half, half)), (i * (half + 4), half + 4))
    return grid


def walk_away_scene() -> Image.Image:
    """The robot walking away down a beach: its back (the backpack) is what the result has to get right."""
    img = gradient((FRAME, FRAME), (150, 205, 245), (215, 235, 250))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 120, FRAME, 160], fill=(50, 120, 180))
    d.rectangle([0, 160, FRAME, FRAME], fill=(236, 214, 160))
    robot(d, 120, 120, 0.9, view="back")
    return img


def park_scene(size: int = FRAME) -> Image.Image:
    img = gradient((size, size), (255, 214, 160), (250, 170, 110))
    d = ImageDraw.Draw(img)
    k = size / FRAME
    d.rectangle([0, 170 * k, size, size], fill=(122, 150, 70))
    d.rectangle([168 * k, 70 * k, 182 * k, 175 * k], fill=(110, 70, 40))
    for x, y, r in ((150, 60, 34), (190, 50, 38), (175, 90, 32), (210, 85, 26)):
        d.ellipse([(x - r) * k, (y - r) * k, (x + r) * k, (y + r) * k], fill=(214, 96, 36))
    d.rectangle([20 * k, 160 * k, 150 * k, 170 * k], fill=(120, 75, 45))
    d.rectangle([20 * k, 140 * k, 150 * k, 148 * k], fill=(140, 90, 55))
    for x in (30, 140):
        d.rectangle([x * k, 170 * k, (x + 6) * k, 196 * k], fill=(80, 50, 30))
    robot(d, int(85 * k), int(112 * k), 0.85 * k, prop="book")
    return img


def soccer_scene() -> Image.Image:
    img = gradient((FRAME, FRAME), (140, 200, 250), (200, 230, 255))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 150, FRAME, FRAME], fill=(60, 160, 70))
    d.line([0, 190, FRAME, 190], fill=(235, 245, 235), width=3)
    d.rectangle([176, 110, 226, 152], outline=(250, 250, 250), width=4)
    robot(d, 96, 110, 0.9, prop="ball")
    return img


def castle_scene(size: int = FRAME) -> Image.Image:
    img = gradient((size, size), (120, 130, 170), (180, 185, 205))
    d = ImageDraw.Draw(img)
    k = size / FRAME
    d.rectangle([0, 165 * k, size, size], fill=(150, 140, 120))
    for x in (0, 160):
        d.rectangle([x * k, 60 * k, (x + 72) * k, 165 * k], fill=(110, 110, 120))
        for c in range(4):
            d.rectangle([(x + c * 20) * k, 48 * k, (x + c * 20 + 12) * k, 60 * k], fill=(110, 110, 120))
    robot(d, int(116 * k), int(112 * k), 0.85 * k, prop="sword")
    return img


def surf_scene(size: int = FRAME) -> Image.Image:
    img = gradient((size, size), (255, 150, 90), (120, 80, 150))
    d = ImageDraw.Draw(img)
    k = size / FRAME
    d.ellipse([150 * k, 40 * k, 200 * k, 90 * k], fill=(255, 220, 120))
    d.rectangle([0, 150 * k, size, size], fill=(40, 110, 170))
    d.pieslice([-40 * k, 90 * k, 150 * k, 250 * k], 180, 300, fill=(230, 245, 255))
    d.ellipse([60 * k, 186 * k, 180 * k, 200 * k], fill=(250, 200, 60))
    robot(d, int(118 * k), int(108 * k), 0.85 * k)
    return img


def depth_hint() -> Image.Image:
    """A depth map of a seated figure, bright = near (what a depth ControlNet takes)."""
    img = gradient((FRAME, FRAME), (20, 20, 20), (110, 110, 110))
    d = ImageDraw.Draw(img)
    d.rectangle([20, 140, 150, 170], fill=(150, 150, 150))
    d.rounded_rectangle([52, 64, 118, 176], radius=18, fill=(235, 235, 235))
    d.ellipse([60, 30, 110, 80], fill=(245, 245, 245))
    return img


# ---------------------------------------------------------------------------------- what each adds
def _chip(d: ImageDraw.ImageDraw, x: int, y: int, text: str, fill=(45, 48, 58), ink=INK) -> int:
    w = int(d.textlength(text, font=font(15))) + 20
    d.rounded_rectangle([x, y, x + w, y + 28], radius=14, fill=fill)
    d.text((x + 10, y + 6), text, font=font(15), fill=ink)
    return x + w


def band_text(lines: list[str]) -> Callable[[Image.Image, ImageDraw.ImageDraw], None]:
    def paint(card: Image.Image, d: ImageDraw.ImageDraw) -> None:
        for i, line in enumerate(lines):
            d.text((LEFT_X, BAND_Y + 4 + 26 * i), line, font=font(16), fill=MUTED)
    return paint


def enhance_band(card: Image.Image, d: ImageDraw.ImageDraw) -> None:
    x = _chip(d, LEFT_X, BAND_Y, '"this character playing soccer"')
    d.text((x + 8, BAND_Y + 4), "+ VLM caption", font=font(16), fill=ACCENT)
    _chip(d, LEFT_X, BAND_Y + 38, '"a teal robot with a red heart ... playing soccer"', fill=(30, 60, 110))


def cfg_band(card: Image.Image, d: ImageDraw.ImageDraw) -> None:
    for i, (label, value) in enumerate((("image guidance", 1.5), ("text guidance", 1.0))):
        y = BAND_Y + 8 + 34 * i
        d.text((LEFT_X, y - 4), f"{label} {value:.1f}", font=font(16), fill=INK)
        d.rounded_rectangle([200, y + 2, 496, y + 10], radius=4, fill=(60, 64, 76))
        knob = 200 + int((value - 1.0) / 1.0 * 296)
        d.rounded_rectangle([200, y + 2, knob, y + 10], radius=4, fill=ACCENT)
        d.ellipse([knob - 9, y - 3, knob + 9, y + 15], fill=INK)


def control_band(card: Image.Image, d: ImageDraw.ImageDraw) -> None:
    card.paste(depth_hint().resize((72, 72)), (LEFT_X, BAND_Y - 4))
    d.text((LEFT_X + 86, BAND_Y + 6), "depth hint -> frame two (ControlNet)", font=font(16), fill=INK)
    d.text((LEFT_X + 86, BAND_Y + 32), "frame one keeps the reference", font=font(15), fill=MUTED)


def batch_frame() -> Image.Image:
    grid = Image.new("RGB", (FRAME, FRAME), BG)
    cell = (FRAME - 6) // 2
    scenes = [park_scene, castle_scene, surf_scene]
    for row, scene in enumerate(scenes):
        h = (FRAME - 4) // 3
        for col in range(2):
            tile = scene(cell).resize((cell, h)) if col == 0 else scene(cell).transpose(Image.FLIP_LEFT_RIGHT).resize((cell, h))
            grid.paste(tile, (col * (cell + 6), row * (h + 2)))
    return grid


SCORES = (0.91, 0.84, 0.80, 0.77)


def best_of_n_frame() -> Image.Image:
    """Four candidates from one batch; the one most like the reference (gold frame) is kept."""
    grid = Image.new("RGB", (FRAME, FRAME), BG)
    cell = (FRAME - 6) // 2
    scenes = [park_scene(cell), surf_scene(cell), castle_scene(cell), park_scene(cell).transpose(Image.FLIP_LEFT_RIGHT)]
    for i, tile in enumerate(scenes):
        grid.paste(tile, ((i % 2) * (cell + 6), (i // 2) * (cell + 6)))
    ImageDraw.Draw(grid).rectangle([0, 0, cell - 1, cell - 1], outline=GOLD, width=5)
    return grid


def best_of_n_band(card: Image.Image, d: ImageDraw.ImageDraw) -> None:
    d.text((LEFT_X, BAND_Y + 4), "identity score vs the reference:", font=font(16), fill=MUTED)
    x = LEFT_X
    for i, score in enumerate(SCORES):
        x = _chip(d, x, BAND_Y + 32, f"{score:.2f}" + (" best" if i == 0 else ""),
                  fill=(120, 90, 10) if i == 0 else (45, 48, 58)) + 8


RESULTS: dict[str, Callable[[], Image.Image]] = {
    "dsd_basic": park_scene,
    "dsd_prompt_enhance": soccer_scene,
    "dsd_true_cfg": castle_scene,
    "dsd_controlnet": park_scene,
    "dsd_batch": batch_frame,
    "dsd_best_of_n": best_of_n_frame,
    "dsd_hires": park_scene,
    "dsd_style_lora": lambda: ImageOps.posterize(castle_scene(), 2),  # a flat "style"
    "dsd_multi_reference": walk_away_scene,
}
REFERENCES: dict[str, Callable[[], Image.Image]] = {"dsd_multi_reference": views_frame}
REFERENCE_LABELS = {"dsd_multi_reference": "frames 1-3: references"}
EXTRAS: dict[str, Callable[[Image.Image, ImageDraw.ImageDraw], None]] = {
    "dsd_basic": band_text(["1 model pass per step, 28 Euler steps,", "FLUX guidance 3.5, 1024 x 512 canvas"]),
    "dsd_prompt_enhance": enhance_band,
    "dsd_true_cfg": cfg_band,
    "dsd_controlnet": control_band,
    "dsd_batch": band_text(["one reference x 3 prompts x 2 seeds", "(a sampler per prompt, batch_size 2)"]),
    "dsd_best_of_n": best_of_n_band,
    "dsd_hires": band_text(["frame two upscaled 2x, then a plain FLUX", "pass at denoise 0.4: 1024 x 1024 result"]),
    "dsd_style_lora": band_text(["DSD adapter + a style LoRA (strength 0.8)", "on the same FLUX model"]),
    "dsd_multi_reference": band_text(["3 pictures of one subject (front, back, side)",
                                      "-> one canvas [ref 1 | ref 2 | ref 3 | result]"]),
}


# ---------------------------------------------------------------------------------- the card
SPELLING = {"dsd": "DSD", "cfg": "CFG", "controlnet": "ControlNet", "n": "N", "hires": "hi-res", "lora": "LoRA",
            "multi": "multi-"}


def title_of(name: str) -> str:
    return " ".join(SPELLING.get(word, word) for word in name.split("_")).replace("- ", "-")


def draw_card(name: str, description: str) -> Image.Image:
    card = Image.new("RGB", (SIZE, SIZE), BG)
    d = ImageDraw.Draw(card)
    d.text((LEFT_X, 16), title_of(name), font=font(34), fill=INK)
    for i, line in enumerate(textwrap.wrap(description, 56)[:4]):
        d.text((LEFT_X, 62 + 20 * i), line, font=font(16), fill=MUTED)
    card.paste(REFERENCES.get(name, reference_frame)(), (LEFT_X, FRAME_Y))
    card.paste(RESULTS.get(name, surf_scene)(), (RIGHT_X, FRAME_Y))
    d.polygon([(242, FRAME_Y + 100), (262, FRAME_Y + 116), (242, FRAME_Y + 132)], fill=ACCENT)
    d.text((LEFT_X, FRAME_Y + FRAME + 4), REFERENCE_LABELS.get(name, "frame 1: reference"), font=font(15), fill=MUTED)
    d.text((RIGHT_X, FRAME_Y + FRAME + 4), "last frame: result" if name in REFERENCES else "frame 2: result",
           font=font(15), fill=MUTED)
    EXTRAS.get(name, band_text([f"workflows/{name}.json"]))(card, d)
    return card


def jpeg_bytes(card: Image.Image, max_bytes: int = MAX_BYTES) -> bytes:
    """The best JPEG quality that fits ``max_bytes`` (the same bytes for the same card)."""
    for quality in range(90, 30, -5):
        buffer = io.BytesIO()
        card.save(buffer, "JPEG", quality=quality, optimize=True, progressive=True)
        if buffer.tell() <= max_bytes:
            return buffer.getvalue()
    raise ValueError(f"thumbnail does not fit in {max_bytes} bytes even at quality 35")
