"""Issue 19's quick instrument: which training recipe makes the toy DSD model use its reference?

    python -m benchmarks.toy_recipe --out DIR [--steps 3000] [--width 128] [--logit-mean 1.5] [--lr 1e-3]

The CLI loop (``benchmarks.toy_loop``) proves the shipped stages run end to end; this probe answers the
question before it, in one process and in minutes: does a recipe teach frame two to copy the reference at
all? It draws (reference, target) pairs straight from the toy domain (training identities; the target in
another context: position, size, background; the caption names the context only), encodes them with the
toy VAE and text encoders (tests/support/toy_model.py), and trains a toy FLUX with the shipped objective
(``training.objective.flow_matching_loss`` and ``TrainingConfig``: timestep density, dropouts). What it
does *not* use is the trainer's LoRA: every weight trains (``--lora RANK`` trains a LoRA of that rank plus
the embedder on the frozen base instead), because a random base is not a pretrained FLUX.

Every ``--eval-every`` steps it reports, on held-out identities:
- **reference gain**: frame two's velocity error at t = 0.5 and 0.9 with each item's own reference, and
  with another item's (same noise, text and target). A model that ignores the reference scores the same
  twice; the gap is what the reference is worth. It moves long before samples do.
- **CP / PF** from the toy judge's reader (tests/support/toy_vision.py) on 16-step samples, and CP/PF of
  the same model with the condition tokens zeroed (no reference).
-> DIR/log.jsonl, DIR/samples_<step>.png (reference | sample per row).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SEQ = 32  # T5 tokens (toy captions are ~12 word tokens), as training/configs/toy_cpu.toml
ADALN = ("norm1.linear", "norm1_context.linear", "norm.linear")  # the blocks' modulation layers


@dataclass
class Pairs:
    target: torch.Tensor  # [n, 16, h, w] canvas latents [reference | target]
    cond: torch.Tensor  # [n, 16, h, w] canvas latents [reference | black]
    prompt: torch.Tensor  # [n, SEQ, D]
    pooled: torch.Tensor  # [n, P]
    items: list  # (identity, reference context, target context)


def toy_encoders():
    """The project's ``FluxEncoders`` over the toy VAE and text encoders (an in-memory pipeline, no transformer)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from dsd.encoders import FluxEncoders
    from dsd.tiny import FLUX_SCHEDULER_CONFIG
    from tests.support import toy_model as tm

    clip, clip_tok, t5, t5_tok = tm.make_toy_text_encoders(0)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG), vae=tm.make_toy_vae(),
                        text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5, tokenizer_2=t5_tok, transformer=None)  # fmt: skip
    return FluxEncoders(pipe, max_sequence_length=SEQ)


def make_pairs(codec, n: int, split: str, seed: int, side: int = 128) -> Pairs:
    """``n`` pairs of ``split``'s identities, each target in a context other than its reference's."""
    from datagen.teacher import toy_domain as dom
    from tests.support.toy_judge import caption_for
    from tests.support.toy_pretrain import panel_tensor
    from tests.support.toy_vision import reading_of

    rng = random.Random(seed)
    ids = [i for i in dom.all_identities() if dom.identity_split(i) == split]
    items = [(rng.choice(ids), *rng.sample(dom.all_contexts(), 2)) for _ in range(n)]
    canvas = torch.stack([torch.cat([panel_tensor(i, c1, side), panel_tensor(i, c2, side)], -1) for i, c1, c2 in items])
    target = _encode(codec, canvas)
    canvas[..., side:] = -1.0
    prompt, pooled = codec.encode_prompt([caption_for(reading_of(i, c2)) for i, _, c2 in items])
    return Pairs(target, _encode(codec, canvas), prompt, pooled, items)


def _encode(codec, canvas: torch.Tensor) -> torch.Tensor:
    return torch.cat([codec.encode_canvas(canvas[i : i + 64]) for i in range(0, len(canvas), 64)])


def make_model(width: int, heads: int, lora: int, seed: int = 0):
    """A toy FLUX of ``width`` with DiT's adaLN-Zero start (every block an identity); all weights train, or a LoRA."""
    from dsd.model import DSDTransformer
    from tests.support import toy_model as tm

    cfg = {**tm.TOY_TRANSFORMER_CONFIG, "num_attention_heads": heads, "attention_head_dim": width // heads}
    model = DSDTransformer(tm.make_toy_transformer(seed, cfg))
    with torch.no_grad():
        for name, module in model.transformer.named_modules():
            if name.endswith(ADALN):
                module.weight.zero_()
                module.bias.zero_()
    if not lora:
        return model.requires_grad_(True)
    from training.config import DEFAULT_LORA_TARGETS, ModelConfig, NetworkConfig
    from training.model import make_trainable

    net = NetworkConfig(rank=lora, alpha=float(lora), target_modules=[*DEFAULT_LORA_TARGETS, *ADALN])
    return make_trainable(model, ModelConfig(base_dtype="float32"), net)


def _forward(model, x: torch.Tensor, cond: torch.Tensor, data: Pairs, t: float) -> torch.Tensor:
    from dsd.tokens import image_ids, text_ids

    h, w = data.target.shape[-2:]
    return model(x, cond, data.prompt, data.pooled, torch.full((len(x),), t), image_ids(h, w), text_ids(SEQ))


@torch.no_grad()
def reference_gain(model, data: Pairs) -> dict[str, list[float]]:
    """Frame two's velocity MSE at t = 0.5 / 0.9: [own reference, another item's reference]."""
    from dsd.tokens import pack, unpack

    h, w = data.target.shape[-2:]
    x0 = pack(data.target)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    out = {}
    for t in (0.5, 0.9):
        errors = []
        for cond in (data.cond, data.cond.roll(1, 0)):
            pred = _forward(model, (1 - t) * x0 + t * noise, pack(cond), data, t)
            errors.append(round(float(unpack(pred - (noise - x0), h, w)[..., w // 2 :].pow(2).mean()), 5))
        out[f"t{t}"] = errors
    return out


@torch.no_grad()
def judge_samples(model, codec, data: Pairs, dest: Path | None, zero: bool = False) -> tuple[float, float]:
    """Mean CP (against the reference's identity) and PF (the asked context) of 16-step samples."""
    from PIL import Image

    from dsd.sampler import GuidanceConfig, TextConditioning, sample_tokens
    from dsd.tokens import image_ids, pack, text_ids, unpack
    from tests.support.toy_vision import context_score, identity_score, read_picture, reading_of

    h, w = data.target.shape[-2:]
    noise = torch.randn(data.target.shape, generator=torch.Generator().manual_seed(7))
    cond = pack(data.cond) * (0.0 if zero else 1.0)
    tokens = sample_tokens(model, pack(noise), cond, TextConditioning(data.prompt, data.pooled), image_ids(h, w),
                           text_ids(SEQ), steps=16, guidance=GuidanceConfig(guidance=1.0))  # fmt: skip
    pixels = ((codec.decode_latent(unpack(tokens, h, w)).clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    side = pixels.shape[1]
    readings = [read_picture(Image.fromarray(p[:, side:])) for p in pixels]
    cp = np.mean([identity_score(reading_of(i, c1), r) for (i, c1, _), r in zip(data.items, readings, strict=True)])
    pf = np.mean([context_score(r, c2) for (_, _, c2), r in zip(data.items, readings, strict=True)])
    if dest is not None:
        Image.fromarray(np.concatenate(list(pixels[:8]), 0)).save(dest)
    return float(cp), float(pf)


def train(args: argparse.Namespace) -> list[dict]:
    from training.config import TrainingConfig
    from training.objective import Batch, flow_matching_loss

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    codec = toy_encoders()
    data, held = make_pairs(codec, args.pairs, "train", 0), make_pairs(codec, args.heldout, "heldout", 1)
    model = make_model(args.width, args.heads, args.lora)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    cfg = TrainingConfig(steps=args.steps, batch_size=args.batch, caption_dropout=0.1, reference_dropout=0.1,
                         logit_mean=args.logit_mean)  # fmt: skip
    gen, empty, log, t0, losses = torch.Generator().manual_seed(0), codec.encode_prompt([""]), [], time.perf_counter(), []
    for step in range(1, args.steps + 1):
        i = torch.randint(0, len(data.items), (args.batch,), generator=gen)
        batch = Batch(cond=data.cond[i], target=data.target[i], prompt_embeds=data.prompt[i], pooled=data.pooled[i], keys=[])
        loss, _ = flow_matching_loss(model, batch, cfg, gen, empty)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            cp, pf = judge_samples(model, codec, held, args.out / f"samples_{step:05d}.png")
            cp0, pf0 = judge_samples(model, codec, held, None, zero=True)
            row = {"step": step, "loss": round(float(np.mean(losses[-100:])), 4), "gain": reference_gain(model, held),
                   "cp": cp, "pf": pf, "cp_no_ref": cp0, "pf_no_ref": pf0, "seconds": round(time.perf_counter() - t0)}  # fmt: skip
            model.train()
            log.append(row)
            with (args.out / "log.jsonl").open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)  # noqa: T201 - the benchmark's report
    return log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.toy_recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for log.jsonl and sample sheets")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--logit-mean", type=float, default=1.5, help="timestep density's mean (0 = SD3's logit-normal)")
    p.add_argument("--width", type=int, default=128, help="transformer width (heads x head size)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lora", type=int, default=0, help="train a LoRA of this rank on the frozen base (0: every weight)")
    p.add_argument("--pairs", type=int, default=2000, help="training pairs drawn from the toy domain")
    p.add_argument("--heldout", type=int, default=24, help="held-out pairs scored at each evaluation")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
