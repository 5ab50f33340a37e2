"""DSD Split Canvas: the decoded two-frame canvas -> (frame two = result, frame one = reconstruction)."""

from __future__ import annotations

from comfy_api.latest import io

from ..dsd.canvas import split_canvas
from .conditioning import DSDLayout, layout_from_input
from .errors import require_finite


class DSDSplitCanvas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DSDSplitCanvas",
            display_name="DSD Split Canvas",
            category="DSD/image",
            description="Cuts the decoded DSD canvas into its frames: the result (right) and the model's "
            "reconstruction of the reference (left, a diagnostic of how well identity was read).",
            inputs=[
                io.Image.Input("canvas", tooltip="The decoded canvas (VAE Decode of the sampled latent)."),
                DSDLayout.Input("layout", optional=True,
                                tooltip="Layout from DSD Reference Conditioning; without it the canvas is split in halves."),
            ],  # fmt: skip
            outputs=[
                io.Image.Output(display_name="result", tooltip="Frame two: the generated image."),
                io.Image.Output(display_name="reconstruction", tooltip="Frame one: the model's redraw of the reference."),
            ],
        )

    @classmethod
    def execute(cls, canvas, layout=None) -> io.NodeOutput:
        require_finite("DSD Split Canvas", canvas=canvas)
        lay = layout_from_input(layout, "DSD Split Canvas") if layout is not None else None
        frame_one, frame_two = split_canvas(canvas, lay, channels_last=True)
        return io.NodeOutput(frame_two.contiguous(), frame_one.contiguous())
