"""Validation during training: fixed references + prompts sampled with the dsd sampler every K steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .cache import Encoders
from .config import TrainConfig


class Validator:
    """Fixed references + prompts sampled with the dsd sampler every ``sampling.every`` steps."""

    def __init__(self, cfg: TrainConfig, source: Any, encoders: Encoders | None) -> None:
        from dsd.sampler import TextConditioning

        s = cfg.sampling
        self.cfg = cfg
        self.encoders = encoders
        self.items: list[tuple[str, torch.Tensor, TextConditioning]] = []
        if s.references:
            if encoders is None:
                raise ValueError("sampling.references need model.flux (VAE + text encoders)")
            from PIL import Image

            from dsd.canvas import CanvasLayout, compose_canvas

            fh, fw = cfg.dataset.frame_buckets[0]
            layout = CanvasLayout(height=fh, width=2 * fw, fit=cfg.dataset.fit)
            prompts = list(s.prompts) or [""]
            for i, ref in enumerate(s.references):
                with Image.open(ref) as im:
                    cond = encoders.encode_canvas(compose_canvas(im.convert("RGB"), layout))[0]
                emb, pooled = encoders.encode_prompt([prompts[i % len(prompts)]])
                self.items.append((f"{Path(ref).stem}", cond, TextConditioning(emb, pooled)))
        else:
            for i in range(min(s.from_dataset, len(source))):
                x = source.get(i)
                self.items.append((source.keys[i], x["cond"], TextConditioning(x["prompt_embeds"][None], x["pooled"][None])))

    @torch.no_grad()
    def run(self, model: Any, step: int, writer: Any, out_dir: Path, write: bool = True) -> list[Path]:
        """Sample every item; ``write=False`` (FSDP ranks > 0) only joins the sharded forward passes."""
        from dsd.canvas import tensor_to_pil
        from dsd.sampler import GuidanceConfig, make_noise, sample_tokens
        from dsd.tokens import image_ids, pack, text_ids, unpack

        was_training = model.training
        model.eval()
        written = []
        for name, cond, text in self.items:
            h, w = cond.shape[-2:]
            tokens = sample_tokens(
                model, pack(make_noise(1, h, w, self.cfg.sampling.seed)), pack(cond[None].float()), text,
                image_ids(h, w), text_ids(text.prompt_embeds.shape[1]), steps=self.cfg.sampling.steps,
                guidance=GuidanceConfig(guidance=self.cfg.sampling.guidance),
            )  # fmt: skip
            if self.encoders is None or not write:
                continue
            image = ((self.encoders.decode_latent(unpack(tokens, h, w)) + 1) / 2).clamp(0, 1)[0].cpu()
            if writer is not None:
                writer.add_image(f"samples/{name}", image, step)
            path = out_dir / "samples" / f"step-{step:06d}-{name.replace('/', '_')}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            tensor_to_pil(image).save(path)
            written.append(path)
        model.train(was_training)
        return written
