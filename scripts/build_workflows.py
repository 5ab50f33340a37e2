"""Writes the DSD example workflows in both formats from one description.

    python scripts/build_workflows.py    # rewrites workflows/*.json (UI), workflows/api/*.json (API),
                                         # the template thumbnails workflows/*.jpg and the example
                                         # inputs the graphs name (example_inputs/*.png)

It lives outside ``workflows/`` because ComfyUI serves every file there as a template asset.

Adding a workflow: write a function returning a ``Graph`` below and append it to ``WORKFLOWS``; it
gets both files and a thumbnail (``workflow_thumbnails.py`` draws a generic card for a name it has no painter
for; add one there to show what the graph adds).

UI format (``workflows/<name>.json``): the LiteGraph document the ComfyUI frontend saves and
loads (drag it onto the canvas; ComfyUI also lists it under the pack's templates).
API format (``workflows/api/<name>.json``): ``{id: {class_type, inputs}}`` for ``POST /prompt``.
Both come from the same graph here, and tests/comfyui/test_workflows.py converts each UI file
back to API form against the live node definitions and compares it with the API file.

``NODE_SPECS`` lists, per node type, the input sockets, the widgets in the frontend's order and
the outputs; the test checks this table against the host's own node definitions.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKFLOWS_DIR = HERE.parent / "workflows"
EXAMPLE_INPUTS_DIR = HERE.parent / "example_inputs"  # copied into ComfyUI's input/ at load (nodes/example_inputs.py)
FRONTEND_VERSION = "1.35.9"

# type -> (input sockets [(name, type)], widgets [names] in frontend order, outputs [(name, type)])
NODE_SPECS: dict[str, tuple[list[tuple[str, str]], list[str], list[tuple[str, str]]]] = {
    "UNETLoader": ([], ["unet_name", "weight_dtype"], [("MODEL", "MODEL")]),
    "DualCLIPLoader": ([], ["clip_name1", "clip_name2", "type", "device"], [("CLIP", "CLIP")]),
    "VAELoader": ([], ["vae_name"], [("VAE", "VAE")]),
    "LoadImage": ([], ["image"], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "CLIPTextEncode": ([("clip", "CLIP")], ["text"], [("CONDITIONING", "CONDITIONING")]),
    "FluxGuidance": ([("conditioning", "CONDITIONING")], ["guidance"], [("CONDITIONING", "CONDITIONING")]),
    "ModelSamplingFlux": ([("model", "MODEL")], ["max_shift", "base_shift", "width", "height"], [("MODEL", "MODEL")]),
    "RandomNoise": ([], ["noise_seed"], [("NOISE", "NOISE")]),
    "KSamplerSelect": ([], ["sampler_name"], [("SAMPLER", "SAMPLER")]),
    "BasicScheduler": ([("model", "MODEL")], ["scheduler", "steps", "denoise"], [("SIGMAS", "SIGMAS")]),
    "SamplerCustomAdvanced": (
        [("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"),
         ("latent_image", "LATENT")],
        [], [("output", "LATENT"), ("denoised_output", "LATENT")],
    ),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE")], ["filename_prefix"], []),
    "PreviewImage": ([("images", "IMAGE")], [], []),
    "PreviewAny": ([("source", "*")], [], []),
    "ControlNetLoader": ([], ["control_net_name"], [("CONTROL_NET", "CONTROL_NET")]),
    "ControlNetApplyAdvanced": (
        [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("control_net", "CONTROL_NET"),
         ("image", "IMAGE"), ("vae", "VAE")],
        ["strength", "start_percent", "end_percent"],
        [("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
    ),
    "DSDAdapterLoader": ([("model", "MODEL")], ["adapter", "strength"], [("MODEL", "MODEL")]),
    "DSDReferenceConditioning": (
        [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"), ("image", "IMAGE")],
        ["width", "height", "fit", "batch_size"],
        [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT"), ("layout", "DSD_LAYOUT")],
    ),
    "DSDGuider": (
        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
        ["image_guidance", "text_guidance", "cfg_start_step"],
        [("GUIDER", "GUIDER")],
    ),
    "DSDMultiReferenceConditioning": (
        [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"), ("image_1", "IMAGE"),
         ("image_2", "IMAGE"), ("image_3", "IMAGE")],
        ["frame_width", "height", "fit", "batch_size"],
        [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT"), ("layout", "DSD_LAYOUT")],
    ),
    "DSDSplitCanvas": ([("canvas", "IMAGE"), ("layout", "DSD_LAYOUT")], [],
                       [("result", "IMAGE"), ("reconstruction", "IMAGE"), ("reconstructions", "IMAGE")]),
    "DSDControlHintToFrame": ([("hint", "IMAGE"), ("layout", "DSD_LAYOUT"), ("reference_hint", "IMAGE")], [],
                              [("hint", "IMAGE")]),
    "DSDPromptEnhance": ([("image", "IMAGE")], ["prompt", "provider", "model", "enabled", "base_url"],
                         [("prompt", "STRING"), ("caption", "STRING")]),
    "CLIPVisionLoader": ([], ["clip_name"], [("CLIP_VISION", "CLIP_VISION")]),
    "LoraLoaderModelOnly": ([("model", "MODEL")], ["lora_name", "strength_model"], [("MODEL", "MODEL")]),
    "ImageScaleBy": ([("image", "IMAGE")], ["upscale_method", "scale_by"], [("IMAGE", "IMAGE")]),
    "VAEEncode": ([("pixels", "IMAGE"), ("vae", "VAE")], [], [("LATENT", "LATENT")]),
    "KSampler": (
        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
        ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"], [("LATENT", "LATENT")],
    ),
    "DSDIdentityScore": (
        [("clip_vision", "CLIP_VISION"), ("reference", "IMAGE"), ("candidates", "IMAGE")],
        ["embedding", "center_crop"],
        [("scores", "FLOAT"), ("summary", "STRING"), ("best", "IMAGE"), ("sorted", "IMAGE"), ("best_index", "INT")],
    ),
}
# The frontend stores one extra value after these widgets: the seed's "control after generate"
# mode and LoadImage's upload button.
EXTRA_WIDGET_VALUES = {("RandomNoise", "noise_seed"): "fixed", ("KSampler", "seed"): "fixed", ("LoadImage", "image"): "image"}
# Frontend-only nodes: kept in the UI file, never sent to the server.
VIRTUAL_NODES = {"Note", "MarkdownNote"}

# File names the workflows expect (docs/workflows.md says where each goes).
FLUX_UNET = "flux1-dev.safetensors"
CLIP_L = "clip_l.safetensors"
T5XXL = "t5xxl_fp16.safetensors"
FLUX_VAE = "ae.safetensors"
DSD_ADAPTER = "dsd_adapter.safetensors"
CONTROLNET = "flux_depth_controlnet.safetensors"
STYLE_LORA = "flux_style_lora.safetensors"  # any FLUX.1-dev LoRA (models/loras)
CLIP_VISION = "sigclip_vision_patch14_384.safetensors"  # the SigLIP file FLUX Redux users already have
REFERENCE_IMAGE = "dsd_reference.png"
# More pictures of the same subject for the multi-reference workflow (the robot from behind and in profile).
VIEW_IMAGES = {"back": "dsd_reference_back.png", "side": "dsd_reference_side.png"}
FRAME = 512  # each frame of the multi-reference canvas
HINT_IMAGE = "dsd_depth_hint.png"
CANVAS_W, CANVAS_H = 1024, 512
STEPS = 28
SEED = 42
PROMPT = "this character sitting on a park bench in autumn, reading a book, soft morning light"


@dataclass
class Node:
    id: int
    type: str
    inputs: dict[str, Any]
    pos: tuple[int, int]
    title: str | None = None
    size: tuple[int, int] = (320, 120)


@dataclass
class Graph:
    name: str
    description: str
    nodes: list[Node] = field(default_factory=list)
    notes: list[tuple[str, tuple[int, int], tuple[int, int]]] = field(default_factory=list)

    def add(self, type_: str, pos: tuple[int, int], title: str | None = None, size: tuple[int, int] | None = None,
            **inputs: Any) -> Node:
        node = Node(len(self.nodes) + 1, type_, inputs, pos, title, size or (320, 60 + 26 * len(inputs)))
        self.nodes.append(node)
        return node

    def note(self, text: str, pos: tuple[int, int], size: tuple[int, int] = (420, 260)) -> None:
        self.notes.append((text, pos, size))


def out(node: Node, slot: int = 0) -> tuple[int, int]:
    return (node.id, slot)


# ---------------------------------------------------------------------------------- the graphs
MODELS_NOTE = (
    "Model files (see docs/workflows.md):\n"
    f"- models/diffusion_models/{FLUX_UNET} (FLUX.1-dev; fp8 works: weight_dtype fp8_e4m3fn)\n"
    f"- models/text_encoders/{CLIP_L} and {T5XXL}\n"
    f"- models/vae/{FLUX_VAE}\n"
    f"- models/dsd/{DSD_ADAPTER} (python -m dsd convert), or the authors' release folder "
    "models/dsd/dsd_model/ and pick its pytorch_lora_weights.safetensors\n"
    "The result is the RIGHT half of the canvas; the left half is the model's redraw of the reference."
)


def _loaders(g: Graph, prompt_text: str | None = PROMPT) -> dict[str, Node]:
    """Loaders, reference image, text and the DSD model: what every workflow shares."""
    unet = g.add("UNETLoader", (40, 60), unet_name=FLUX_UNET, weight_dtype="default")
    clip = g.add("DualCLIPLoader", (40, 200), clip_name1=CLIP_L, clip_name2=T5XXL, type="flux", device="default")
    vae = g.add("VAELoader", (40, 380), vae_name=FLUX_VAE)
    image = g.add("LoadImage", (40, 480), title="Reference image", size=(320, 360), image=REFERENCE_IMAGE)
    pos = g.add("CLIPTextEncode", (420, 60), title="Prompt", size=(400, 180),
                clip=out(clip), text=prompt_text if prompt_text is not None else "")
    neg = g.add("CLIPTextEncode", (420, 280), title="Negative prompt (empty)", size=(400, 100), clip=out(clip), text="")
    guided = g.add("FluxGuidance", (860, 60), conditioning=out(pos), guidance=3.5)
    dsd = g.add("DSDAdapterLoader", (420, 430), model=out(unet), adapter=DSD_ADAPTER, strength=1.0)
    sampling = g.add("ModelSamplingFlux", (860, 430), model=out(dsd), max_shift=1.15, base_shift=0.5,
                     width=CANVAS_W, height=CANVAS_H)
    return {"unet": unet, "clip": clip, "vae": vae, "image": image, "pos": pos, "neg": neg, "guided": guided,
            "dsd": dsd, "model": sampling}


def _base(g: Graph, prompt_text: str | None = PROMPT, batch_size: int = 1) -> dict[str, Node]:
    """The shared loaders plus DSD Reference Conditioning (one reference)."""
    n = _loaders(g, prompt_text)
    n["ref"] = g.add("DSDReferenceConditioning", (860, 180), size=(340, 220), positive=out(n["guided"]),
                     negative=out(n["neg"]), vae=out(n["vae"]), image=out(n["image"]), width=CANVAS_W, height=CANVAS_H,
                     fit="crop", batch_size=batch_size)
    return n


def _sample(g: Graph, n: dict[str, Node], x: int, y: int, positive, negative, image_guidance: float = 1.0,
            text_guidance: float = 1.0, seed: int = SEED, prefix: str = "DSD/result", latent=None,
            preview_reconstruction: bool = True, save: bool = True, references: int = 1) -> Node:
    guider = g.add("DSDGuider", (x, y), positive=positive, negative=negative, model=out(n["model"]),
                   image_guidance=image_guidance, text_guidance=text_guidance, cfg_start_step=2)
    noise = g.add("RandomNoise", (x, y + 240), noise_seed=seed)
    sampler = g.add("KSamplerSelect", (x, y + 350), sampler_name="euler")
    sigmas = g.add("BasicScheduler", (x, y + 440), model=out(n["model"]), scheduler="simple", steps=STEPS, denoise=1.0)
    run = g.add("SamplerCustomAdvanced", (x + 360, y), noise=out(noise), guider=out(guider), sampler=out(sampler),
                sigmas=out(sigmas), latent_image=latent if latent is not None else out(n["ref"], 2))
    decoded = g.add("VAEDecode", (x + 360, y + 200), samples=out(run), vae=out(n["vae"]))
    split = g.add("DSDSplitCanvas", (x + 360, y + 330), canvas=out(decoded), layout=out(n["ref"], 3))
    if save:
        g.add("SaveImage", (x + 720, y), size=(400, 420), title="Result (frame two)", images=out(split),
              filename_prefix=prefix)
    if preview_reconstruction and references > 1:
        g.add("PreviewImage", (x + 720, y + 460), size=(400, 260), title="Reconstructions of the references",
              images=out(split, 2))
    elif preview_reconstruction:
        g.add("PreviewImage", (x + 720, y + 460), size=(400, 260), title="Reconstruction of the reference (frame one)",
              images=out(split, 1))
    return split


def dsd_basic() -> Graph:
    g = Graph("dsd_basic", "DSD subject-preserving generation: reference + prompt -> the subject in a new scene.")
    n = _base(g)
    _sample(g, n, 1260, 60, out(n["ref"], 0), out(n["ref"], 1))
    g.note(MODELS_NOTE + "\n\nImage and text guidance 1 (the authors' default): one model pass per step, "
           "28 Euler steps, FLUX guidance 3.5, a 1024x512 canvas.", (40, 880))
    return g


def dsd_prompt_enhance() -> Graph:
    g = Graph("dsd_prompt_enhance", "DSD with LLM prompt enhancement: a VLM captions the reference, an LLM "
              "rewrites your prompt with the subject's details, the result feeds the text encoder.")
    n = _base(g, prompt_text="")
    enhance = g.add("DSDPromptEnhance", (420, 900), size=(400, 260), image=out(n["image"]),
                    prompt="this character playing soccer", provider="gemini", model="gemini-2.5-flash",
                    enabled=True, base_url="")
    # The text widget of the prompt encoder becomes an input fed by the enhanced prompt.
    n["pos"].inputs["text"] = out(enhance, 0)
    g.add("PreviewAny", (860, 900), size=(400, 160), title="Enhanced prompt", source=out(enhance, 0))
    g.add("PreviewAny", (860, 1100), size=(400, 160), title="Caption of the reference", source=out(enhance, 1))
    _sample(g, n, 1260, 60, out(n["ref"], 0), out(n["ref"], 1), prefix="DSD/enhanced")
    g.note(MODELS_NOTE + "\n\nAPI keys: set GEMINI_API_KEY (or OPENAI_API_KEY) before starting ComfyUI, or enter "
           "the key in Settings > DSD (kept on the server, never readable back). Keys never go into the workflow. "
           "For a local server "
           "choose openai-compatible and set base_url, e.g. http://127.0.0.1:11434/v1 (Ollama).", (40, 1200))
    return g


def dsd_true_cfg() -> Graph:
    g = Graph("dsd_true_cfg", "DSD with two-scale true CFG: image guidance pulls toward the reference, text "
              "guidance toward the prompt (three model passes per step from step 3 on).")
    n = _base(g)
    n["neg"].inputs["text"] = "blurry, low quality, distorted"
    # The authors' demo defaults: image 1.5, text 1.0 (their sliders span 1.0-2.0).
    _sample(g, n, 1260, 60, out(n["ref"], 0), out(n["ref"], 1), image_guidance=1.5, text_guidance=1.0,
            prefix="DSD/true_cfg")
    g.note(MODELS_NOTE + "\n\nTrue CFG: e = e00 + s_i (e_t0 - e00) + s_t (e_full - e_t0), from the third step "
           "on. Authors' demo defaults s_i = 1.5, s_t = 1.0; raise image_guidance (up to ~2) when identity drifts, "
           "text_guidance (up to ~2) when the prompt is ignored. About 3x slower than dsd_basic.", (40, 880))
    return g


def dsd_controlnet() -> Graph:
    g = Graph("dsd_controlnet", "DSD + a FLUX ControlNet: the hint (depth, canny...) lands in frame two, so the "
              "result follows its layout while frame one keeps the reference.")
    n = _base(g)
    cn = g.add("ControlNetLoader", (40, 1000), control_net_name=CONTROLNET)
    hint = g.add("LoadImage", (40, 1100), title="Control hint (depth map)", size=(320, 360), image=HINT_IMAGE)
    framed = g.add("DSDControlHintToFrame", (420, 1000), hint=out(hint), layout=out(n["ref"], 3))
    apply_cn = g.add("ControlNetApplyAdvanced", (860, 1000), size=(340, 200), positive=out(n["ref"], 0),
                     negative=out(n["ref"], 1), control_net=out(cn), image=out(framed), vae=out(n["vae"]),
                     strength=0.7, start_percent=0.0, end_percent=0.8)
    _sample(g, n, 1260, 60, out(apply_cn, 0), out(apply_cn, 1), prefix="DSD/controlnet")
    g.note(MODELS_NOTE + f"\n- models/controlnet/{CONTROLNET}: a FLUX.1-dev ControlNet (XLabs, InstantX/Union "
           "or Shakker-Labs Union Pro). Feed a hint made for the RESULT (e.g. a depth map); DSD Control Hint To "
           "Frame puts it in frame two and leaves frame one black (no control).", (40, 1500))
    return g


def dsd_batch() -> Graph:
    g = Graph("dsd_batch", "One reference, several prompts x several seeds: each prompt has its own text "
              "encoder and sampler; batch_size gives consecutive seeds per prompt.")
    prompts = [
        "this character sitting on a park bench in autumn, reading a book",
        "this character as a knight in shining armour, in a castle courtyard",
        "this character surfing a big wave at sunset, action shot",
    ]
    n = _base(g, prompt_text=prompts[0], batch_size=2)
    # Further prompts share loaders, model and the reference encoding of the first.
    y = 60
    _sample(g, n, 1260, y, out(n["ref"], 0), out(n["ref"], 1), prefix="DSD/batch_p1", preview_reconstruction=False)
    for i, text in enumerate(prompts[1:], start=2):
        y += 660
        pos = g.add("CLIPTextEncode", (420, y), title=f"Prompt {i}", size=(400, 160), clip=out(n["clip"]), text=text)
        guided = g.add("FluxGuidance", (420, y + 200), conditioning=out(pos), guidance=3.5)
        ref = g.add("DSDReferenceConditioning", (860, y), size=(340, 220), positive=out(guided),
                    negative=out(n["neg"]), vae=out(n["vae"]), image=out(n["image"]), width=CANVAS_W,
                    height=CANVAS_H, fit="crop", batch_size=2)
        _sample(g, {**n, "ref": ref}, 1260, y, out(ref, 0), out(ref, 1), prefix=f"DSD/batch_p{i}",
                preview_reconstruction=False)
    g.note(MODELS_NOTE + "\n\nbatch_size 2 on each DSD Reference Conditioning: two images per prompt with "
           "consecutive noise (seed 42, batch index 0 and 1). Add prompts by copying one Prompt -> FluxGuidance "
           "-> DSD Reference Conditioning -> sampler group.", (40, 900))
    return g


def dsd_best_of_n() -> Graph:
    g = Graph("dsd_best_of_n", "DSD best-of-N: one reference, N seeds in one batch, each result scored by its "
              "image-embedding similarity to the reference; the best one is saved.")
    n = _base(g, batch_size=4)
    split = _sample(g, n, 1260, 60, out(n["ref"], 0), out(n["ref"], 1), preview_reconstruction=False, save=False)
    vision = g.add("CLIPVisionLoader", (1260, 620), title="Vision encoder for scoring", clip_name=CLIP_VISION)
    score = g.add("DSDIdentityScore", (1620, 620), size=(340, 200), clip_vision=out(vision), reference=out(n["image"]),
                  candidates=out(split), embedding="image_embeds", center_crop=True)
    g.add("SaveImage", (2000, 60), size=(400, 420), title="Best result", images=out(score, 2),
          filename_prefix="DSD/best_of_n")
    g.add("PreviewImage", (2000, 520), size=(400, 300), title="All results, best first", images=out(score, 3))
    g.add("PreviewAny", (2000, 860), size=(400, 220), title="Scores", source=out(score, 1))
    g.note(MODELS_NOTE + f"\n- models/clip_vision/{CLIP_VISION} (the one FLUX Redux uses) or any CLIP / SigLIP / "
           "DINOv2 vision file Load CLIP Vision accepts.\n\nbatch_size 4 on DSD Reference Conditioning: four "
           "results with consecutive noise from one seed, sampled in one batch. DSD Identity Score ranks them by "
           "cosine similarity to the reference (CLIP-I with a CLIP model) and the best is saved; raise batch_size "
           "for more candidates.", (40, 880))
    return g


def dsd_hires() -> Graph:
    g = Graph("dsd_hires", "DSD, then a hi-res pass: frame two upscaled 2x and refined by plain FLUX at denoise 0.4 "
              "(1024 x 1024 result).")
    n = _base(g)
    split = _sample(g, n, 1260, 60, out(n["ref"], 0), out(n["ref"], 1), save=False)
    up = g.add("ImageScaleBy", (1260, 640), image=out(split), upscale_method="lanczos", scale_by=2.0)
    encoded = g.add("VAEEncode", (1620, 640), pixels=out(up), vae=out(n["vae"]))
    plain = g.add("ModelSamplingFlux", (1260, 800), model=out(n["unet"]), max_shift=1.15, base_shift=0.5,
                  width=2 * CANVAS_H, height=2 * CANVAS_H)
    refine = g.add("KSampler", (1620, 800), size=(320, 300), model=out(plain), positive=out(n["guided"]),
                   negative=out(n["neg"]), latent_image=out(encoded), seed=SEED, steps=20, cfg=1.0,
                   sampler_name="euler", scheduler="simple", denoise=0.4)
    decoded = g.add("VAEDecode", (1980, 800), samples=out(refine), vae=out(n["vae"]))
    g.add("SaveImage", (2340, 640), size=(420, 460), title="Hi-res result", images=out(decoded),
          filename_prefix="DSD/hires")
    g.note(MODELS_NOTE + "\n\nHi-res pass: plain FLUX (no adapter) refines the upscaled frame two at denoise 0.4 "
           "(0.3 keeps more of DSD's identity, 0.5 adds more detail). The sampler's ModelSamplingFlux is set to "
           "the 1024 x 1024 result.", (40, 880))
    return g


def dsd_style_lora() -> Graph:
    g = Graph("dsd_style_lora", "DSD + a style LoRA: any FLUX LoRA stacked on the DSD model (both are weight "
              "patches, so the order does not matter).")
    n = _base(g)
    lora = g.add("LoraLoaderModelOnly", (420, 600), title="Style LoRA", model=out(n["dsd"]), lora_name=STYLE_LORA,
                 strength_model=0.8)
    n["model"].inputs["model"] = out(lora)
    _sample(g, n, 1260, 60, out(n["ref"], 0), out(n["ref"], 1), prefix="DSD/style_lora")
    g.note(MODELS_NOTE + f"\n- models/loras/{STYLE_LORA}: any FLUX.1-dev style LoRA. Lower its strength when "
           "the identity drifts; DSD's adapter strength stays 1.", (40, 880))
    return g


def dsd_multi_reference() -> Graph:
    g = Graph("dsd_multi_reference", "DSD with several pictures of ONE subject (front, back, side): every view in "
              "its own frame of one canvas, so details one picture cannot show (the back) carry into the result.")
    n = _loaders(g, prompt_text="this robot walking away along a beach at noon, seen from behind")
    front = n["image"]
    front.title = "Reference 1 (front)"
    back = g.add("LoadImage", (40, 900), title="Reference 2 (back)", size=(320, 360), image=VIEW_IMAGES["back"])
    side = g.add("LoadImage", (40, 1300), title="Reference 3 (side, optional)", size=(320, 360),
                 image=VIEW_IMAGES["side"])
    width = 4 * FRAME  # three references + the result
    ref = g.add("DSDMultiReferenceConditioning", (860, 180), size=(360, 260), positive=out(n["guided"]),
                negative=out(n["neg"]), vae=out(n["vae"]), image_1=out(front), image_2=out(back), image_3=out(side),
                frame_width=FRAME, height=FRAME, fit="crop", batch_size=1)
    n["model"].inputs.update(width=width, height=FRAME)
    _sample(g, {**n, "ref": ref}, 1260, 60, out(ref, 0), out(ref, 1), prefix="DSD/multi_reference", references=3)
    g.note(MODELS_NOTE.replace("RIGHT half", "RIGHTMOST frame").replace("the left half is the model's redraw of the "
           "reference", "the frames before it are the model's redraws of the references") +
           "\n\nThree pictures of the SAME subject, one frame each: a canvas of four 512 x 512 frames (2048 x 512; "
           "about twice the tokens of dsd_basic, four times the attention). Use an adapter trained with several "
           "references (metadata dsd_train_references): with one trained for a single reference (the authors' "
           "release), DSD Guider shows a warning and the extra views may be ignored. For two pictures, disconnect "
           "Reference 3 and set ModelSamplingFlux's width to 1536.", (40, 1700))
    return g


WORKFLOWS = [dsd_basic, dsd_prompt_enhance, dsd_true_cfg, dsd_controlnet, dsd_batch, dsd_best_of_n, dsd_hires,
             dsd_style_lora, dsd_multi_reference]


# ---------------------------------------------------------------------------------- the formats
def _is_link(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2


def to_api(g: Graph) -> dict[str, Any]:
    prompt: dict[str, Any] = {}
    for node in g.nodes:
        inputs = {k: ([str(v[0]), v[1]] if _is_link(v) else v) for k, v in node.inputs.items()}
        entry: dict[str, Any] = {"class_type": node.type, "inputs": inputs}
        if node.title:
            entry["_meta"] = {"title": node.title}
        prompt[str(node.id)] = entry
    return prompt


def _topological_order(g: Graph) -> dict[int, int]:
    deps = {n.id: {v[0] for v in n.inputs.values() if _is_link(v)} for n in g.nodes}
    order: dict[int, int] = {}
    while len(order) < len(deps):
        for nid in sorted(deps):
            if nid not in order and deps[nid] <= set(order):
                order[nid] = len(order)
    return order


def _connect(g: Graph, node: Node, ui_inputs: list, links: list, outputs: dict, name: str, type_: str, value: Any,
             widget: bool) -> None:
    """Append one UI input slot to ``ui_inputs`` (and its link, when ``value`` is a link)."""
    slot = len(ui_inputs)
    entry: dict[str, Any] = {"name": name, "type": type_, "link": None}
    if widget:
        entry["widget"] = {"name": name}
    if _is_link(value):
        link_id = len(links) + 1
        src, src_slot = value
        link_type = NODE_SPECS[g.nodes[src - 1].type][2][src_slot][1]
        links.append([link_id, src, src_slot, node.id, slot, link_type])
        outputs[src][src_slot]["links"].append(link_id)
        entry["link"] = link_id
    ui_inputs.append(entry)


def _ui_node(g: Graph, node: Any, links: list, outputs: dict, order: dict[int, int]) -> dict[str, Any]:
    sockets, widgets, _ = NODE_SPECS[node.type]
    unknown = set(node.inputs) - {s for s, _ in sockets} - set(widgets)
    if unknown:
        raise ValueError(f"{g.name}: {node.type} has no input(s) {sorted(unknown)}")
    ui_inputs: list[dict[str, Any]] = []
    input_types = dict(sockets)
    for name, type_ in sockets:
        _connect(g, node, ui_inputs, links, outputs, name, type_, node.inputs.get(name), widget=False)
    values: list[Any] = []
    for name in widgets:
        value = node.inputs.get(name)
        if _is_link(value):
            # A widget fed by a link: the socket carries the value, the widget keeps a placeholder.
            src_type = NODE_SPECS[g.nodes[value[0] - 1].type][2][value[1]][1]
            _connect(g, node, ui_inputs, links, outputs, name, input_types.get(name, src_type), value, widget=True)
            values.append("")
        else:
            values.append(value)
        extra = EXTRA_WIDGET_VALUES.get((node.type, name))
        if extra is not None:
            values.append(extra)
    entry = {
        "id": node.id, "type": node.type, "pos": list(node.pos), "size": list(node.size), "flags": {},
        "order": order[node.id], "mode": 0, "inputs": ui_inputs, "outputs": outputs[node.id],
        "properties": {"Node name for S&R": node.type}, "widgets_values": values,
    }
    if node.title:
        entry["title"] = node.title
    return entry


def to_ui(g: Graph) -> dict[str, Any]:
    links: list[list[Any]] = []
    outputs: dict[int, list[dict[str, Any]]] = {}
    for node in g.nodes:
        outputs[node.id] = [{"name": name, "type": t, "links": [], "slot_index": i}
                            for i, (name, t) in enumerate(NODE_SPECS[node.type][2])]
    order = _topological_order(g)
    ui_nodes = [_ui_node(g, node, links, outputs, order) for node in g.nodes]
    next_id = len(g.nodes) + 1
    for i, (text, pos, size) in enumerate(g.notes):
        ui_nodes.append({"id": next_id + i, "type": "Note", "pos": list(pos), "size": list(size), "flags": {},
                         "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [],
                         "properties": {"text": ""}, "widgets_values": [text], "title": "About this workflow",
                         "color": "#432", "bgcolor": "#653"})
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-dsd/workflows/{g.name}")),
        "revision": 0,
        "last_node_id": max(n["id"] for n in ui_nodes),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {
            "ds": {"scale": 0.6, "offset": [0, 0]},
            "frontendVersion": FRONTEND_VERSION,
            "dsd": {"name": g.name, "description": g.description, "api_format": f"api/{g.name}.json"},
        },
        "version": 0.4,
    }


def _thumbnails():
    """workflow_thumbnails.py beside this file (this script is run by path, not imported as a package)."""
    import importlib.util
    import sys

    name = "dsd_workflows_thumbnails"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "workflow_thumbnails.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # atomic: a reader never sees half a workflow


def write_all(root: Path = WORKFLOWS_DIR) -> list[Path]:
    written = []
    (root / "api").mkdir(exist_ok=True)
    thumbnails = _thumbnails()
    for make in WORKFLOWS:
        g = make()
        for path, doc in ((root / f"{g.name}.json", to_ui(g)), (root / "api" / f"{g.name}.json", to_api(g))):
            _write_atomic(path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
            written.append(path)
        # ComfyUI's templates browser (frontend 1.35.9) asks for <name>.jpg beside <name>.json.
        thumbnail = root / f"{g.name}.jpg"
        _write_atomic(thumbnail, thumbnails.jpeg_bytes(thumbnails.draw_card(g.name, g.description)))
        written.append(thumbnail)
    return written


def write_example_inputs(thumbnails, root: Path = EXAMPLE_INPUTS_DIR) -> list[Path]:
    """The LoadImage files the graphs name: the thumbnails' reference robot and depth hint at 512 px."""
    import io

    root.mkdir(exist_ok=True)
    written = []
    views = [(name, thumbnails.reference_frame(view)) for view, name in VIEW_IMAGES.items()]
    for name, image in ((REFERENCE_IMAGE, thumbnails.reference_frame()), (HINT_IMAGE, thumbnails.depth_hint()), *views):
        buffer = io.BytesIO()
        image.resize((512, 512), resample=3).save(buffer, "PNG", optimize=True)  # 3: bicubic
        _write_atomic(root / name, buffer.getvalue())
        written.append(root / name)
    return written


if __name__ == "__main__":
    write_all()
    write_example_inputs(_thumbnails())
