"""Teacher backend ``toy`` (issue 19): draws grid prompts procedurally instead of with FLUX.

It reads the grid prompt the prompts stage wrote (template mode): the subject names an identity of
the toy domain ("a red circle with blue stripes", see ``toy_domain``) and each "position: line" panel
line a context (the pose words pick position and size, the setting words the background). Each panel
is drawn at the grid's layout with a white gutter and a little placement jitter, so the real panels
stage has real cutting to do. Like FLUX, the teacher is not always consistent: a seeded share of the
grids (``INCONSISTENT_SHARE``) shows another identity in one panel, which curation should reject.
With ``teacher.toy_views = "sides"`` (issue 20) a share of the panels (``teacher.toy_whole_share``, half by
default) show the whole object and the others one of its sides (``toy_domain.VIEWS``). Everything depends on
(prompt, seed) only.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from PIL import Image

from . import toy_domain as dom
from .config import TOY_JITTER, TOY_WHOLE_SHARE, TeacherConfig

logger = logging.getLogger(__name__)

INCONSISTENT_SHARE = 0.2
GUTTER = 16  # pixels of white between panels, half of it around the grid (288 px grids: 2 x 128 px panels)
_POSITION_WORDS = {"left", "right", "middle", "top", "bottom", "top-left", "top-right", "bottom-left", "bottom-right"}


class ToyPromptError(ValueError):
    """A grid prompt that does not name a toy identity."""


@dataclass(frozen=True)
class GridPlan:
    """What one toy grid shows: the identity of each panel (row-major) and its context."""

    rows: int
    cols: int
    identities: tuple[dom.Identity, ...]
    contexts: tuple[dom.Context, ...]
    odd_panel: int | None  # the panel showing another identity, if this grid is inconsistent
    views: tuple[str, ...] = ()  # each panel's view (toy_domain.VIEWS); () = all whole


def panel_lines(prompt: str) -> list[str]:
    """The per-panel lines of a template-mode grid prompt ("top-left: ...; top-right: ...")."""
    body = prompt.split(". ", 1)[1] if ". " in prompt else prompt
    lines = []
    for part in body.rstrip(". ").split("; "):
        head, _, rest = part.partition(": ")
        if rest and (head in _POSITION_WORDS or head.startswith("row ")):
            lines.append(rest)
    return lines


def _layout(prompt: str, n: int) -> tuple[int, int]:
    if n == 4:
        return 2, 2
    if n == 2 and "top: " in prompt:
        return 2, 1
    if n == 9:
        return 3, 3
    return 1, max(n, 2)


def grid_plan(prompt: str, seed: int, placement: str = "panel", views: str = "whole",
              whole_share: float = TOY_WHOLE_SHARE) -> GridPlan:  # fmt: skip
    """Parse ``prompt`` and draw the seeded choices (which grids are inconsistent, and how). ``placement``
    "grid" gives every panel the first panel's position and size (see ``TeacherConfig.toy_placement``);
    ``views`` "sides" draws each panel's view (``TeacherConfig.toy_views``), whole with chance ``whole_share``."""
    identity = dom.parse_identity(prompt)
    if identity is None:
        raise ToyPromptError(f"the toy teacher draws toy subjects only ('a red circle with blue stripes'): {prompt[:80]!r}")
    lines = panel_lines(prompt)
    rows, cols = _layout(prompt, len(lines))
    n = rows * cols
    lines = (lines + [""] * n)[:n]
    rng = random.Random(f"toy-teacher|{seed}")
    identities = [identity] * n
    odd = None
    if rng.random() < INCONSISTENT_SHARE:
        odd = rng.randrange(n)
        others = [i for i in dom.all_identities() if i != identity]
        identities[odd] = rng.choice(others)
    contexts = [dom.parse_context(line) for line in lines]
    if placement == "grid":
        contexts = [dom.Context(contexts[0].position, contexts[0].size, c.background) for c in contexts]
    seen = ()
    if views == "sides":  # its own stream: the other choices stay those of the "whole" grid
        view_rng = random.Random(f"toy-views|{seed}")
        # by default half the panels whole (a copy of a whole reference is learned first, as in the whole-view
        # loop), a quarter each side; share 0.5 draws what the weights (2, 1, 1) drew before it was a setting
        weights = (whole_share, (1 - whole_share) / 2, (1 - whole_share) / 2)
        seen = tuple(view_rng.choices(dom.VIEWS, weights=weights)[0] for _ in range(n))
    return GridPlan(rows, cols, tuple(identities), tuple(contexts), odd, seen)


def draw_grid(plan: GridPlan, width: int, height: int, seed: int, jitter: float = TOY_JITTER) -> Image.Image:
    """The grid picture: panels of equal size separated by ``GUTTER`` white pixels, each object moved by up to
    ``jitter`` of the panel side."""
    rng = random.Random(f"toy-jitter|{seed}")
    m = GUTTER // 2  # a white frame around the grid too: flat panels reach the picture's edge otherwise
    pw = (width - 2 * m - (plan.cols - 1) * GUTTER) // plan.cols
    ph = (height - 2 * m - (plan.rows - 1) * GUTTER) // plan.rows
    side = min(pw, ph)
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    for k, (identity, ctx) in enumerate(zip(plan.identities, plan.contexts, strict=True)):
        r, c = divmod(k, plan.cols)
        shift = (rng.uniform(-jitter, jitter), rng.uniform(-jitter, jitter))
        panel = dom.draw_panel(identity, ctx, side, shift, plan.views[k] if plan.views else "whole")
        cx, cy = m + c * (pw + GUTTER), m + r * (ph + GUTTER)
        if (pw, ph) != (side, side):  # a non-square cell: fill it with the panel's background first
            grid.paste(Image.new("RGB", (pw, ph), dom.BACKGROUNDS[ctx.background]), (cx, cy))
        grid.paste(panel, (cx + (pw - side) // 2, cy + (ph - side) // 2))
    return grid


class ToyTeacher:
    """The ``Backend`` protocol of the teacher stage, drawing instead of sampling."""

    name = "toy"

    def __init__(self, cfg: TeacherConfig, local_rank: int = 0) -> None:
        self.cfg = cfg

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        cfg = self.cfg
        plans = [grid_plan(p, s, cfg.toy_placement, cfg.toy_views, cfg.toy_whole_share) for p, s in zip(prompts, seeds, strict=True)]
        return [draw_grid(plan, cfg.width, cfg.height, s, cfg.toy_jitter) for plan, s in zip(plans, seeds, strict=True)]

    def close(self) -> None:
        pass
