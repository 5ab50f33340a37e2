"""DSD Multi-Reference Conditioning: 2-3 pictures of ONE subject -> a canvas of k + 1 frames -> condition tokens.

Why a node of its own rather than a mode on DSD Reference Conditioning: there, a batch of N images means N
canvases (N subjects or N tries), the way every ComfyUI image batch behaves. Several pictures of one subject
are a different thing (one canvas ``[ref_1 | ... | ref_k | target]``, docs/method.md), and separate sockets
for "front", "back", "side" say so in the graph itself; a mode switch would give the same socket two meanings.

Each ``image_i`` may itself be a batch of B (B canvases, the i-th picture of each subject) or a single image
shared by every canvas. Frames are ``frame_width x height`` each, so the canvas is ``(k + 1) * frame_width``
wide and the same widgets fit any k.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..dsd.canvas import FIT_MODES, MIN_REFERENCE_SIDE, CanvasLayout
from .conditioning import MAX_SIZE, DSDLayout, attach_reference, canvas_batch
from .errors import DSDBatchError, DSDInputError, require_finite

NODE = "DSD Multi-Reference Conditioning"
MAX_FRAME_WIDTH = MAX_SIZE // 2


def reference_inputs(image_1, image_2, image_3=None) -> dict:
    """The connected references by input name, in frame order (image_3 only when connected)."""
    refs = {"image_1": image_1, "image_2": image_2}
    if image_3 is not None:
        refs["image_3"] = image_3
    return refs


def check_references(refs: dict) -> int:
    """Finite, large enough, batches of 1 or one common B; returns B (the number of canvases)."""
    require_finite(NODE, **refs)
    for name, image in refs.items():
        if image.ndim != 4 or min(image.shape[1], image.shape[2]) < MIN_REFERENCE_SIDE:
            raise DSDInputError(
                f"{NODE}: {name} is {'x'.join(map(str, image.shape[2:0:-1]))} pixels; DSD needs at least "
                f"{MIN_REFERENCE_SIDE} px on each side of every reference (the model reads identity from each frame)."
            )
    batches = {name: int(image.shape[0]) for name, image in refs.items()}
    b = max(batches.values())
    if any(n not in (1, b) for n in batches.values()):
        sizes = ", ".join(f"{name}={n}" for name, n in batches.items())
        raise DSDBatchError(
            f"{NODE}: reference batches {sizes}. Each input is one picture of the subject (batch 1, shared by every "
            f"canvas) or a batch of {b} (one picture per canvas); mixed batch sizes cannot be paired."
        )
    return b


class DSDMultiReferenceConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DSDMultiReferenceConditioning",
            display_name="DSD Multi-Reference Conditioning",
            category="DSD/conditioning",
            description="Several pictures of ONE subject (front, back, a detail) in frames 1..k of one canvas, the "
            "result in the last frame. More views carry more of the identity. Needs an adapter trained with several "
            "references for full effect (DSD Guider warns otherwise).",
            inputs=[
                io.Conditioning.Input("positive", tooltip="Text conditioning of the prompt (FLUX text encoder)."),
                io.Conditioning.Input("negative", tooltip="Text conditioning of the negative prompt (an empty prompt is fine)."),
                io.Vae.Input("vae", tooltip="FLUX's VAE (ae.safetensors)."),
                io.Image.Input("image_1", tooltip="First picture of the subject (frame 1). At least 32 px per side."),
                io.Image.Input("image_2", tooltip="Second picture of the SAME subject (frame 2), e.g. another side."),
                io.Image.Input("image_3", optional=True, tooltip="Optional third picture of the same subject (frame 3)."),
                io.Int.Input("frame_width", default=512, min=16, max=MAX_FRAME_WIDTH, step=16,
                             tooltip="Width of EACH frame in pixels; the canvas is (references + 1) x this wide "
                             "(1536 for two references of 512)."),
                io.Int.Input("height", default=512, min=16, max=MAX_SIZE, step=16,
                             tooltip="Canvas (and frame) height in pixels; the authors use 512."),
                io.Combo.Input("fit", options=list(FIT_MODES), default="crop",
                               tooltip="How each reference fills its frame: centre crop (authors), letterbox pad, or stretch."),
                io.Int.Input("batch_size", default=1, min=1, max=4096,
                             tooltip="Latent batch size; single references are shared by the whole batch."),
            ],  # fmt: skip
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Positive with the references attached."),
                io.Conditioning.Output(display_name="negative", tooltip="Negative with the references attached."),
                io.Latent.Output(display_name="latent", tooltip="Empty canvas latent to sample (k + 1 frames wide)."),
                DSDLayout.Output(display_name="layout",
                                 tooltip="Canvas geometry (with the number of references) for DSD Split Canvas."),
            ],  # fmt: skip
        )

    @classmethod
    def execute(cls, positive, negative, vae, image_1, image_2, frame_width, height, fit, batch_size=1,
                image_3=None) -> io.NodeOutput:  # fmt: skip
        refs = reference_inputs(image_1, image_2, image_3)
        canvases = check_references(refs)
        layout = CanvasLayout.from_frame(height, frame_width, references=len(refs), fit=fit)
        batch = canvas_batch(canvases, batch_size, NODE)
        return io.NodeOutput(*attach_reference(positive, negative, vae, list(refs.values()), layout, batch, NODE))
