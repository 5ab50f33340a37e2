"""DSD Control Hint To Frame: a ControlNet hint sized to the DSD canvas, hint in the last (result) frame.

ComfyUI's stock Apply ControlNet then works on the DSD canvas: frame one gets black (no control)
or the reference's own hint, frame two the hint for the result.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..dsd.canvas import CanvasLayout, fit_reference, to_rgb01
from .conditioning import DSDLayout, layout_from_input
from .errors import DSDBatchError, require_finite


def _fit(image, layout: CanvasLayout) -> torch.Tensor:
    return fit_reference(to_rgb01(image, channels_last=True), layout.height, layout.frame_width, layout.fit, 0.0)


def hint_canvas(hint, layout: CanvasLayout, reference_hint=None) -> torch.Tensor:
    """``[B, H, W, 3]`` in 0..1: frame one black or ``reference_hint``, the last frame ``hint``; further reference
    frames of a multi-reference canvas black (no control)."""
    right = _fit(hint, layout)
    left = _fit(reference_hint, layout) if reference_hint is not None else torch.zeros_like(right[:1])
    b = max(right.shape[0], left.shape[0])
    if any(x.shape[0] not in (1, b) for x in (right, left)):
        raise DSDBatchError(
            f"DSD Control Hint To Frame: hint batch {right.shape[0]} and reference hint batch {left.shape[0]} do not "
            "match; give the same number of images or a single one."
        )
    black = [torch.zeros_like(right[:1]).expand(b, -1, -1, -1)] * (layout.references - 1)
    canvas = torch.cat([left.expand(b, -1, -1, -1), *black, right.expand(b, -1, -1, -1)], dim=-1)
    return canvas.permute(0, 2, 3, 1).contiguous()


class DSDControlHintToFrame(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DSDControlHintToFrame",
            display_name="DSD Control Hint To Frame",
            category="DSD/image",
            description="Places a ControlNet hint (depth, canny, pose...) in frame two of a canvas-sized image, so the "
            "stock Apply ControlNet guides only the result frame.",
            inputs=[
                io.Image.Input("hint", tooltip="The control hint for the result (any size; fitted like the reference)."),
                DSDLayout.Input("layout", tooltip="Layout from DSD Reference Conditioning."),
                io.Image.Input("reference_hint", optional=True,
                               tooltip="Optional hint of the reference itself for frame one; black when absent."),
            ],  # fmt: skip
            outputs=[io.Image.Output(display_name="hint", tooltip="Canvas-sized hint for Apply ControlNet.")],
        )

    @classmethod
    def execute(cls, hint, layout, reference_hint=None) -> io.NodeOutput:
        node = "DSD Control Hint To Frame"
        require_finite(node, hint=hint, reference_hint=reference_hint)
        return io.NodeOutput(hint_canvas(hint, layout_from_input(layout, node), reference_hint))
