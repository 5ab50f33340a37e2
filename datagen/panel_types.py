"""Types shared by panel detection (datagen/panel_detect.py) and the panels stage (datagen/panels.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class PanelsConfig:
    max_pairs_per_grid: int = 6
    min_panel_size: int = 64
    gutter_tolerance: float = 0.2  # max distance of a gutter (or cut) from the even split, in panel pitches
    seed: int = 0
    # A gutter line: this share of its pixels within uniform_tolerance grey levels (max over RGB) of
    # the line's colour (light noise and JPEG ringing stay inside; texture and shapes do not) ...
    uniform_tolerance: int = 20
    uniform_fraction: float = 0.9
    # ... whose colour covers less than this share of the line beside it (else it is background;
    # crossing gutters and thick borders of the same colour may cover up to ~40 %).
    continuation_max: float = 0.5
    colour_tolerance: int = 24  # gutters within this of each other share a colour
    min_gutter_px: int = 2
    max_border_fraction: float = 0.2
    max_gutter_fraction: float = 0.35  # of the pitch; a wider uniform band is a flat margin, not a gutter
    max_panel_spread: float = 0.2  # panels cut along an axis differ in size by at most this share
    max_edge_spread: float = 0.012  # ... touching panels cut at colour edges (the teacher draws equal panels;
    # a gutter hidden by a panel of its colour, cut into that panel, makes it 8+ px taller)
    # Touching panels: a cut needs a colour edge across this share of the span (the step across 3
    # lines above edge_step and twice the steps beside it) ...
    min_edge_fraction: float = 0.5
    edge_step: int = 24
    # ... that stands out from the next-best edge in its window: 1 - second/best at least this.
    min_edge_confidence: float = 0.4
    # Touching panels with no clear edge: "reject" (default), or "even" (split evenly, confidence 0;
    # only for inputs known to be grids of that layout, e.g. the toy's noise grids).
    no_edge: Literal["reject", "even"] = "reject"

    def __post_init__(self) -> None:
        if self.max_pairs_per_grid < 0 or self.min_panel_size < 1 or self.min_gutter_px < 1:
            raise ValueError("panels: max_pairs_per_grid >= 0, min_panel_size >= 1 and min_gutter_px >= 1 required")
        if not 0 < self.gutter_tolerance < 0.5:
            raise ValueError(f"panels.gutter_tolerance must be in (0, 0.5), got {self.gutter_tolerance}")
        if not 0 < self.uniform_fraction <= 1 or not 0 < self.continuation_max <= 1:
            raise ValueError("panels: uniform_fraction and continuation_max must be in (0, 1]")
        if not 0 <= self.max_border_fraction < 0.5:
            raise ValueError("panels: max_border_fraction must be in [0, 0.5)")
        if not 0 < self.min_edge_fraction <= 1 or not 0 <= self.min_edge_confidence <= 1:
            raise ValueError("panels: min_edge_fraction in (0, 1] and min_edge_confidence in [0, 1] required")


@dataclass(frozen=True, slots=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]

    def iou(self, other: Box) -> float:
        ix = max(0, min(self.x1, other.x1) - max(self.x0, other.x0))
        iy = max(0, min(self.y1, other.y1) - max(self.y0, other.y0))
        inter = ix * iy
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union else 0.0


@dataclass(frozen=True, slots=True)
class Detection:
    """Boxes (row-major) and how they were found: ``method`` "gutters" or "edges" (touching panels),
    ``confidence`` in [0, 1] and a one-line ``detail`` for the panels log."""

    boxes: tuple[Box, ...]
    method: str
    confidence: float
    detail: str


class PanelDetectionError(ValueError):
    """The grid cannot be cut into the prompt's layout; the message says why."""


class PanelCountMismatch(PanelDetectionError):
    """The image visibly shows another number of panels than the layout asks for."""

    def __init__(
        self, expected: int, found: int, rows: int, cols: int, detail: str = "", shown: tuple[int, int] | None = None
    ) -> None:
        self.expected, self.found, self.rows, self.cols, self.shown = expected, found, rows, cols, shown
        msg = f"panel count mismatch: the prompt asks for {rows}x{cols} = {expected} panels, the image shows {found}"
        super().__init__(msg + (f" ({detail})" if detail else ""))
