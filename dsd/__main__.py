"""``python -m dsd``: make-tiny | convert | generate | eval | demo.

Flags, logging and exit codes are the shared ones of ``dsd/cli.py`` (-v/-vv/-q, 2 = bad input,
1 = a provider failed, 130 = interrupted).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from . import cli
from .cli_output import emit

logger = logging.getLogger("dsd")


def exit_codes() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(bad input or config -> 2, a provider that failed -> 1); see dsd/cli.py."""
    from .canvas import ReferenceImageError
    from .config import ConfigError
    from .eval.judge import JudgeConfigError
    from .eval.layout import BenchmarkError
    from .model import DSDModelError
    from .providers import ProviderError
    from .tokens import CanvasSizeError
    from .weights.errors import WeightsError

    user = (WeightsError, ConfigError, ReferenceImageError, CanvasSizeError, DSDModelError, FileNotFoundError,
            BenchmarkError, JudgeConfigError, _embedding_error())  # fmt: skip
    return user, (PromptEnhanceFailed, ProviderError)


def _embedding_error() -> type[BaseException]:
    from .eval.embeddings import EmbeddingModelError

    return EmbeddingModelError


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from .tiny import make_tiny

    t0 = time.perf_counter()
    files = make_tiny(args.dir, seed=args.seed, full_width=args.full_width)
    emit(f"tiny DSD fixtures (seed {args.seed}) written to {files.root} in {time.perf_counter() - t0:.1f}s")
    emit(f"  FLUX pipeline folder (diffusers):  {files.flux_dir}")
    emit(f"  DSD release (authors' layout):     {files.release_dir}")
    emit(f"  base FLUX, ComfyUI/BFL keys:       {files.flux_bfl}")
    if files.full_width_flux:
        emit(f"  full-width FLUX (ComfyUI-loadable): {files.full_width_flux}")
    return 0


def _pick_device(name: str):
    import torch

    if name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _pick_dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ref", required=True, type=Path, action="append",
                   help="reference image (any format PIL reads); repeat it for several pictures of ONE subject "
                        "(multi-reference DSD: a canvas of k + 1 frames)")
    p.add_argument("--prompt", required=True, help="what to draw with the reference's subject")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--flux", required=True, type=Path, help="diffusers FLUX.1-dev folder (vae, text encoders, tokenizers)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--release", type=Path, help="the authors' DSD release folder (transformer/ + pytorch_lora_weights.safetensors)")
    src.add_argument("--adapter", type=Path, help="a DSD adapter file (from `dsd convert` or training) used with --flux's transformer")
    p.add_argument("--negative-prompt", default="", help="negative prompt for true CFG (default empty)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--guidance", type=float, default=3.5, help="FLUX distilled guidance embedding")
    p.add_argument("--image-guidance", type=float, default=1.0, help="s_i; true CFG runs when > 1")
    p.add_argument("--text-guidance", type=float, default=1.0, help="s_t (used when --image-guidance > 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=1024,
                   help="canvas width with one reference (two frames); k references make k + 1 frames of width/2 each")
    p.add_argument("--height", type=int, default=512, help="canvas height")
    p.add_argument("--fit", choices=["crop", "pad", "stretch"], default="crop", help="how the reference fills frame one")
    p.add_argument("--lora-scale", type=float, default=1.0)
    p.add_argument("--max-sequence-length", type=int, default=None,
                   help="T5 tokens (default: the adapter's training length, else 512; a mismatch warns)")
    p.add_argument("--keep-canvas", action="store_true", help="also save the full canvas and frame one (reconstruction)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--enhance", choices=["gemini", "openai"], default=None,
                   help="prompt enhancement (the authors' default): a VLM captions the reference, an LLM merges it into "
                        "the prompt. Keys from GEMINI_API_KEY / OPENAI_API_KEY; openai = any OpenAI-compatible server")
    p.add_argument("--enhance-model", default=None, help="model name (default gemini-2.5-flash / gpt-4o-mini)")
    p.add_argument("--enhance-base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:11434/v1")


def cmd_generate(args: argparse.Namespace) -> int:
    from .canvas import CanvasLayout, tensor_to_pil
    from .io import atomic_path, atomic_write_json
    from .pipeline import DSDPipeline
    from .sampler import GuidanceConfig

    layout = CanvasLayout(height=args.height, width=args.width, fit=args.fit)
    paths = args.ref if isinstance(args.ref, list) else [args.ref]
    refs = [_read_reference(path) for path in paths]
    ref = refs[0] if len(refs) == 1 else refs
    prompt = args.prompt
    if getattr(args, "enhance", None):
        prompt = _enhance(args, refs[0])
    device = _pick_device(args.device)
    dtype = _pick_dtype(args.dtype, device)
    t0 = time.perf_counter()
    pipe = DSDPipeline.from_local(args.flux, release=args.release, adapter=args.adapter, lora_scale=args.lora_scale, dtype=dtype, device=device,
                                  max_sequence_length=args.max_sequence_length)  # fmt: skip
    t_load = time.perf_counter() - t0
    guidance = GuidanceConfig(guidance=args.guidance, image_guidance=args.image_guidance, text_guidance=args.text_guidance)
    result = pipe.generate(ref, prompt, args.negative_prompt, layout=layout, steps=args.steps, guidance=guidance, seed=args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, tensor in _outputs(result, args.keep_canvas):
        path = out / f"{name}_seed{args.seed}.png"
        with atomic_path(path, suffix=".png") as tmp:
            tensor_to_pil(tensor[0]).save(tmp, format="PNG")
        written.append(path)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    settings["ref"] = str(paths[0]) if len(paths) == 1 else [str(path) for path in paths]
    atomic_write_json(
        out / f"settings_seed{args.seed}.json",
        {**settings, "prompt_used": prompt, "vae_encoding": "posterior mean", "predictions": result.stats.predictions},
    )
    emit(f"generated in {time.perf_counter() - t0:.1f}s (load {t_load:.1f}s, {args.steps} steps, {result.stats.predictions} predictions)")
    for path in written:
        emit(f"  {path}")
    return 0


def _read_reference(path: Path):
    from .images import UnreadableImage, read_image

    try:  # upright (EXIF), alpha over white: the reference ComfyUI's LoadImage would give
        return read_image(path)
    except (UnreadableImage, OSError) as exc:
        raise FileNotFoundError(f"{path}: cannot read the reference image ({exc})") from exc


def _outputs(result, keep_canvas: bool) -> list[tuple[str, object]]:
    """The result, and with ``keep_canvas`` the canvas and the reconstruction of every reference frame."""
    if not keep_canvas:
        return [("frame_two", result.frame_two)]
    more = [(f"frame_ref{i}", frame) for i, frame in enumerate(result.frames[1:-1], start=2)]
    return [("frame_two", result.frame_two), ("canvas", result.canvas), ("frame_one", result.frame_one), *more]


def _enhance(args: argparse.Namespace, reference) -> str:
    from .enhance import DEFAULT_MODELS, enhance_prompt
    from .providers import ProviderConfig, ProviderError, make_provider

    cfg = ProviderConfig(
        kind=args.enhance,
        model=args.enhance_model or DEFAULT_MODELS[args.enhance],
        base_url=args.enhance_base_url,
        timeout_s=60.0,
        max_retries=3,
    )
    try:
        with make_provider(cfg) as provider:
            result = enhance_prompt(provider, reference.convert("RGB"), args.prompt)
    except ProviderError as exc:
        raise PromptEnhanceFailed(f"prompt enhancement failed: {exc} (run without --enhance to skip it)") from exc
    emit(f"enhanced prompt: {result.prompt}")
    return result.prompt


class PromptEnhanceFailed(RuntimeError):
    pass


def _demo_reference(path: Path) -> Path:
    """A synthetic reference (a coloured character-like shape) so the demo needs no input."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (384, 320), (235, 232, 220))
    d = ImageDraw.Draw(img)
    d.ellipse((120, 40, 264, 184), fill=(220, 120, 60), outline=(60, 30, 20), width=4)
    d.ellipse((155, 90, 175, 110), fill=(20, 20, 20))
    d.ellipse((209, 90, 229, 110), fill=(20, 20, 20))
    d.rectangle((150, 184, 234, 300), fill=(40, 90, 200))
    img.save(path)
    return path


def cmd_demo(args: argparse.Namespace) -> int:
    from .tiny import make_tiny

    out: Path = args.out
    t0 = time.perf_counter()
    emit("DSD demo on TINY RANDOM weights (a smoke run of the real code path; the images are noise-like, not art).")
    out.mkdir(parents=True, exist_ok=True)
    if args.tiny is not None and (args.tiny / "flux" / "model_index.json").is_file():
        from .tiny import TinyFiles

        files = TinyFiles(root=args.tiny, flux_dir=args.tiny / "flux", release_dir=args.tiny / "dsd_release", flux_bfl=args.tiny / "flux_bfl.safetensors")
    else:
        files = make_tiny(args.tiny or out / "tiny", seed=0)
    ref = _demo_reference(out / "reference.png")
    gen_args = argparse.Namespace(
        ref=ref, prompt="the same character surfing a wave at sunset", out=out / "generate", flux=files.flux_dir,
        release=files.release_dir, adapter=None, negative_prompt="", steps=args.steps, guidance=3.5, image_guidance=2.0,
        text_guidance=1.5, seed=0, width=256, height=128, fit="crop", lora_scale=1.0, keep_canvas=True, device="cpu", dtype="float32",
    )  # fmt: skip
    cmd_generate(gen_args)
    emit(f"demo done in {time.perf_counter() - t0:.1f}s; reference: {ref}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dsd", description="Diffusion Self-Distillation tools")
    cli.add_common_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    flags = cli.common_parent()

    p = sub.add_parser("make-tiny", parents=[flags], help="write tiny random DSD/FLUX fixtures (offline, deterministic)")
    p.add_argument("dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full-width", action="store_true", help="also write the hidden-3072 FLUX ComfyUI's stock loader accepts (~1 GB)")
    p.set_defaults(func=cmd_make_tiny)

    p = sub.add_parser("convert", parents=[flags], help="authors' release -> DSD adapter (+ diff report vs FLUX.1-dev, SVD LoRA of the difference)")
    from .convert import add_convert_arguments, run_convert

    add_convert_arguments(p)
    p.set_defaults(func=run_convert)

    p = sub.add_parser("generate", parents=[flags], help="reference-conditioned generation with the standalone sampler")
    add_generate_arguments(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", parents=[flags], help="score a model or folders of images on a benchmark (CLIP, DINO, VLM judge) + report")
    from .eval.run import add_eval_arguments, cmd_eval

    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", parents=[flags], help="tiny end-to-end run: fixtures -> generate; writes PNGs")
    p.add_argument("--out", type=Path, default=Path("outputs/demo"))
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--tiny", type=Path, default=None, help="reuse fixtures from `make-tiny DIR` (made there if missing)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    user, failures = exit_codes()
    return cli.run_cli(build_parser(), argv, user_errors=user, failures=failures)


if __name__ == "__main__":
    sys.exit(main())
