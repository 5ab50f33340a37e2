"""DSD Split Canvas: the decoded canvas -> the result (last frame) and the reconstructions of the references.

Outputs keep their order across versions (workflows link outputs by index): ``result``, ``reconstruction``
(frame one), then ``reconstructions``, every reference frame as one image batch, so a multi-reference canvas
shows how each of its k references was read.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..dsd.canvas import split_canvas, split_frames
from .conditioning import DSDLayout, layout_from_input
from .errors import DSDInputError, require_finite


def reference_frames(canvas: torch.Tensor, layout) -> torch.Tensor:
    """Frames 1..k of each canvas ``[B, H, W, 3]`` as one batch ``[B * k, H, W / (k + 1), 3]``, canvas by canvas."""
    k = layout.references if layout is not None else 1
    frames = split_frames(canvas, k + 1, channels_last=True)[:k] if k > 1 else [split_canvas(canvas, layout, True)[0]]
    return torch.stack(frames, dim=1).flatten(0, 1).contiguous()


class DSDSplitCanvas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DSDSplitCanvas",
            display_name="DSD Split Canvas",
            category="DSD/image",
            description="Cuts the decoded DSD canvas into its frames: the result (rightmost) and the model's "
            "reconstruction of each reference (left, a diagnostic of how well identity was read).",
            inputs=[
                io.Image.Input("canvas", tooltip="The decoded canvas (VAE Decode of the sampled latent)."),
                DSDLayout.Input("layout", optional=True,
                                tooltip="Layout from DSD (Multi-)Reference Conditioning; without it the canvas is split "
                                "in halves (one reference)."),
            ],  # fmt: skip
            outputs=[
                io.Image.Output(display_name="result", tooltip="The last frame: the generated image."),
                io.Image.Output(display_name="reconstruction", tooltip="Frame one: the model's redraw of the (first) reference."),
                io.Image.Output(display_name="reconstructions",
                                tooltip="Every reference frame (1..k) as one batch, canvas by canvas; with one "
                                "reference the same as reconstruction."),
            ],  # fmt: skip
        )

    @classmethod
    def execute(cls, canvas, layout=None) -> io.NodeOutput:
        require_finite("DSD Split Canvas", canvas=canvas)
        lay = layout_from_input(layout, "DSD Split Canvas") if layout is not None else None
        if lay is not None and lay.references > 1 and canvas.shape[2] % lay.frames:
            raise DSDInputError(
                f"DSD Split Canvas: the canvas is {canvas.shape[2]} px wide, which does not split into the layout's "
                f"{lay.frames} frames. Connect the VAE Decode of the latent from the same conditioning node as the layout."
            )
        frame_one, target = split_canvas(canvas, lay, channels_last=True)
        return io.NodeOutput(target.contiguous(), frame_one.contiguous(), reference_frames(canvas, lay))
