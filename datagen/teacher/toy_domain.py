"""The toy domain of issue 19: flat shapes whose *identity* must survive a change of *context*.

Identity = shape x body colour x accent colour x pattern (6 x 8 x 7 x 4 = 1344 identities).
Context = where and how large the object is and the background, chosen by the words of a panel line
that the prompts stage writes in template mode (its pose list picks position/size, its setting list the
background). Everything is drawn procedurally, so the toy teacher, the toy judge and the held-out
benchmark agree on what a picture should show. Captions name an identity as
"a <body> <shape> with <accent> <pattern>", which the prompts stage keeps as the grid's subject.

Issue 20's multi-reference variant adds *views*: a panel shows the whole object, or only one of its two
sides, the ``plain`` side (the shape in its body colour, no pattern) or the ``patterned`` side (the
pattern in the accent colour on an ivory shape). One side carries half the identity, so several
references of random sides carry more of it than one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (240, 220, 30), "green": (30, 170, 50),
    "cyan": (30, 200, 220), "blue": (30, 60, 220), "purple": (140, 40, 200), "pink": (250, 120, 190),
}  # fmt: skip
PATTERNS = ("stripes", "dot", "outline", "half")
# Backgrounds are far from every object colour (so the judge can segment) and from the teacher's white
# gutters (so the panels stage can cut).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128), "black": (15, 15, 15), "sand": (190, 170, 120), "navy": (20, 25, 70),
    "mint": (140, 200, 160), "plum": (100, 60, 100),
}  # fmt: skip
# Template-mode panel words -> context. Settings pick the background; poses pick position and size.
SETTING_BACKGROUND = {
    "city street": "grey", "beach": "sand", "forest": "mint", "living room": "plum", "snowy": "grey",
    "photo studio": "grey", "market": "plum", "library": "navy", "mountain": "black", "kitchen": "sand",
    "garden": "mint", "rooftop": "navy",
}  # fmt: skip
POSE_PLACEMENT = {
    "front view": ("center", "large"), "three-quarter view": ("left", "small"), "top-down view": ("top", "small"),
    "close-up": ("center", "large"), "side view": ("right", "small"), "low angle": ("bottom", "small"),
    "held in a hand": ("left", "large"), "on a shelf": ("right", "large"),
}  # fmt: skip
POSITIONS = {"center": (0.5, 0.5), "left": (0.32, 0.5), "right": (0.68, 0.5), "top": (0.5, 0.32), "bottom": (0.5, 0.68)}
SIZES = {"small": 0.36, "large": 0.56}  # object diameter as a share of the panel side
# Views (issue 20): what a panel shows of the object, and the words a caption names it by ("whole": none).
VIEWS = ("whole", "plain", "patterned")
VIEW_WORDS = {"plain": "its plain side", "patterned": "its patterned side"}
IVORY = (236, 232, 222)  # the patterned side's ground: no object colour, far from every background and the gutters
_SUBJECT = re.compile(
    rf"\b(?P<body>{'|'.join(COLOURS)}) (?P<shape>{'|'.join(SHAPES)}) with (?:an? )?"
    rf"(?P<accent>{'|'.join(COLOURS)}) (?P<pattern>{'|'.join(PATTERNS)})\b"
)


@dataclass(frozen=True)
class Identity:
    shape: str
    body: str
    accent: str
    pattern: str

    @property
    def text(self) -> str:
        article = "a " if self.pattern in ("dot", "outline", "half") else ""
        return f"a {self.body} {self.shape} with {article}{self.accent} {self.pattern}"

    @property
    def key(self) -> str:
        return f"{self.shape}-{self.body}-{self.accent}-{self.pattern}"


@dataclass(frozen=True)
class Context:
    position: str = "center"
    size: str = "large"
    background: str = "grey"


def all_identities() -> list[Identity]:
    return [Identity(s, b, a, p) for s in SHAPES for b in COLOURS for a in COLOURS if a != b for p in PATTERNS]


def identity_split(identity: Identity, held_out_share: float = 0.2) -> str:
    """``train`` or ``heldout``: a fixed hash split, so held-out identities never reach training."""
    h = int(hashlib.sha1(identity.key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if h < held_out_share else "train"


def parse_identity(text: str) -> Identity | None:
    m = _SUBJECT.search(text.casefold())
    if not m or m["body"] == m["accent"]:
        return None
    return Identity(m["shape"], m["body"], m["accent"], m["pattern"])


def parse_context(line: str) -> Context:
    """The context a panel line asks for (defaults where it names none)."""
    text = line.casefold()
    position, size = next((v for k, v in POSE_PLACEMENT.items() if k in text), ("center", "large"))
    background = next((v for k, v in SETTING_BACKGROUND.items() if k in text), "grey")
    return Context(position, size, background)


def parse_view(text: str) -> str:
    """The view a caption or panel line names ("whole" where it names none)."""
    text = text.casefold()
    return next((v for v, words in VIEW_WORDS.items() if words in text), "whole")


def context_line(ctx: Context) -> str:
    """A panel line (template-mode vocabulary) that asks for ``ctx``."""
    poses = [k for k in POSE_PLACEMENT if k != "close-up"]
    # The closest pose the vocabulary has (a picture can show a placement no pose asks for).
    pose = max(poses, key=lambda k: (POSE_PLACEMENT[k] == (ctx.position, ctx.size), POSE_PLACEMENT[k][0] == ctx.position,
                                     POSE_PLACEMENT[k][1] == ctx.size))  # fmt: skip
    setting = next((k for k, v in SETTING_BACKGROUND.items() if v == ctx.background), "city street")
    return f"{pose}, in a {setting}"


def all_contexts() -> list[Context]:
    placements = sorted(set(POSE_PLACEMENT.values()))
    return [Context(p, s, b) for p, s in placements for b in BACKGROUNDS]


def draw_contexts(rng, n: int, placement: str = "panel") -> tuple[Context, list[Context]]:
    """A first context and ``n`` others drawn with ``rng`` (a ``random.Random``); with ``placement`` "grid"
    the others keep the first's position and size on other backgrounds, as the toy teacher's grid mode."""
    first, *others = rng.sample(all_contexts(), 1 + n)
    if placement == "grid":
        backgrounds = rng.sample([b for b in BACKGROUNDS if b != first.background], n)
        others = [Context(first.position, first.size, b) for b in backgrounds]
    return first, others


def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean mask of ``shape`` filling a ``side`` x ``side`` box."""
    im = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(im)
    s = side - 1
    if shape == "circle":
        d.ellipse([0, 0, s, s], fill=255)
    elif shape == "square":
        d.rectangle([s * 0.1, s * 0.1, s * 0.9, s * 0.9], fill=255)
    elif shape == "triangle":
        d.polygon([(s / 2, 0), (s, s), (0, s)], fill=255)
    elif shape == "diamond":
        d.polygon([(s / 2, 0), (s, s / 2), (s / 2, s), (0, s / 2)], fill=255)
    elif shape == "cross":
        d.rectangle([s / 3, 0, 2 * s / 3, s], fill=255)
        d.rectangle([0, s / 3, s, 2 * s / 3], fill=255)
    elif shape == "ring":
        d.ellipse([0, 0, s, s], fill=255)
        d.ellipse([s * 0.3, s * 0.3, s * 0.7, s * 0.7], fill=0)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(im) > 127


def pattern_mask(pattern: str, mask: np.ndarray) -> np.ndarray:
    """Where the accent colour goes inside ``mask`` (its coordinates are the object's box)."""
    side = mask.shape[0]
    yy, xx = np.mgrid[0:side, 0:side]
    if pattern == "stripes":  # five bands at any size: body, accent, body, accent, body
        return mask & ((yy * 5 // side) % 2 == 1)
    if pattern == "dot":
        c = (side - 1) / 2
        cy = c if mask[int(c), int(c)] else side * 0.15  # a ring's centre is its hole: the dot sits on the band
        return mask & ((yy - cy) ** 2 + (xx - c) ** 2 <= (side * 0.2) ** 2)
    if pattern == "half":
        return mask & (xx >= side // 2)
    if pattern == "outline":
        from scipy.ndimage import binary_erosion

        return mask & ~binary_erosion(mask, iterations=max(side // 8, 2))
    raise ValueError(f"unknown pattern {pattern!r}")


def draw_panel(identity: Identity, ctx: Context, side: int = 128, jitter: tuple[float, float] = (0.0, 0.0),
               view: str = "whole") -> Image.Image:  # fmt: skip
    """One panel: ``identity`` in ``ctx`` on a ``side`` x ``side`` square (jitter in panel shares), seen as
    ``view`` (see ``VIEWS``)."""
    img = np.empty((side, side, 3), np.uint8)
    img[:] = BACKGROUNDS[ctx.background]
    obj = max(int(round(SIZES[ctx.size] * side)), 8)
    cx, cy = POSITIONS[ctx.position]
    x0 = int(round((cx + jitter[0]) * side - obj / 2))
    y0 = int(round((cy + jitter[1]) * side - obj / 2))
    margin = side // 32  # objects never touch the panel's edge (a gutter must stay a clean band)
    x0, y0 = min(max(x0, margin), side - obj - margin), min(max(y0, margin), side - obj - margin)
    mask = shape_mask(identity.shape, obj)
    accent = pattern_mask(identity.pattern, mask)
    region = img[y0 : y0 + obj, x0 : x0 + obj]
    region[mask] = IVORY if view == "patterned" else COLOURS[identity.body]
    if view != "plain":
        region[accent] = COLOURS[identity.accent]
    return Image.fromarray(img)
