"""The toy FLUX's pretraining (issue 19): what FLUX already knows before DSD's first step, at toy scale.

DSD fine-tunes a LoRA on a *pretrained* FLUX that can already draw consistent multi-panel grids (that is
where the teacher's data comes from). A random toy FLUX knows nothing, and a LoRA on it does not learn at
a CPU's budget (README, "Recipe probe"). So the toy loop first pretrains the whole toy transformer as a
text-to-two-panel-grid model on the toy domain: both panels noisy, no reference, the caption names the
identity half of the time and only the second panel's context otherwise (then the two panels can agree
only by looking at each other, as FLUX's grid panels do). Identities of the training split only; the
shipped objective (``training.objective``) with every weight trainable. Then the DSD recipe proper (LoRA +
condition embedder through ``python -m training``) starts from this base.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

SEQ = 32  # T5 tokens, as training/configs/toy_cpu.toml


def panel_tensor(identity, ctx, side: int = 128, view: str = "whole") -> torch.Tensor:
    """One toy panel as a [3, side, side] tensor in [-1, 1]."""
    from datagen.teacher import toy_domain as dom

    return torch.from_numpy(np.array(dom.draw_panel(identity, ctx, side, view=view))).permute(2, 0, 1).float() / 127.5 - 1


def grid_pairs(n: int, placement: str, seed: int, views: str = "whole", frames: tuple[int, ...] = (2,)) -> list[tuple]:
    """``n`` (identity, contexts, views) rows of a training identity's panels, ``len(contexts)`` of ``frames``
    panels each: "grid" keeps the placement, ``views`` "sides" shows each panel whole or one side at random."""
    from datagen.teacher import toy_domain as dom

    rng = random.Random(seed)
    ids = [i for i in dom.all_identities() if dom.identity_split(i) == "train"]
    items = []
    for _ in range(n):
        f = rng.choice(frames) if len(frames) > 1 else frames[0]  # one size: the draws of a two-panel base as before
        first, others = dom.draw_contexts(rng, f - 1, placement)
        identity = rng.choice(ids)
        seen = tuple(rng.choice(dom.VIEWS) for _ in range(f)) if views == "sides" else ("whole",) * f
        items.append((identity, (first, *others), seen))
    return items


def _encode_data(encoders, items: list[tuple], side: int) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per panel count: canvas latents (``side`` px panels) and, per row, the caption with and without the
    identity ([n, 2, SEQ, D], [n, 2, P]); the caption describes the last panel."""
    from tests.support.toy_judge import caption_for
    from tests.support.toy_vision import reading_of

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [encoders.encode_prompt(texts[k : k + 256]) for k in range(0, len(texts), 256)]
        return torch.cat([e for e, _ in parts]), torch.cat([p for _, p in parts])

    out = {}
    for f in sorted({len(c) for _, c, _ in items}):
        rows = [it for it in items if len(it[1]) == f]
        latents = []
        for k in range(0, len(rows), 64):
            canvas = torch.stack([torch.cat([panel_tensor(i, c, side, v) for c, v in zip(cs, vs, strict=True)], -1)
                                  for i, cs, vs in rows[k : k + 64]])  # fmt: skip
            latents.append(encoders.encode_canvas(canvas))
        context = [caption_for(reading_of(i, cs[-1], vs[-1])) for i, cs, vs in rows]
        (e1, p1), (e2, p2) = encode([f"{i.text}, {c}" for (i, _, _), c in zip(rows, context, strict=True)]), encode(context)
        out[f] = (torch.cat(latents), torch.stack([e1, e2], 1), torch.stack([p1, p2], 1))
    return out


def pretrain_toy_base(flux_dir: str | Path, steps: int = 600, pairs: int = 2000, batch: int = 16, lr: float = 1e-3,
                      logit_mean: float = 1.5, placement: str = "grid", seed: int = 0, views: str = "whole",
                      frames: tuple[int, ...] = (2,), side: int = 128) -> dict[str, float | list[int]]:  # fmt: skip
    """Pretrain ``flux_dir``'s transformer in place (see the module docstring) on rows of ``frames`` panels of
    ``side`` px (several: a base that knows wider canvases, as FLUX does); returns its steps, panel counts, last
    loss and seconds. The caller builds ``flux_dir`` in a temporary folder and renames it when this returns (a
    crash leaves no base)."""
    from diffusers import FluxPipeline

    from dsd.encoders import FluxEncoders
    from dsd.model import DSDTransformer
    from training.config import TrainingConfig
    from training.objective import Batch, flow_matching_loss

    flux_dir = Path(flux_dir)
    pipe = FluxPipeline.from_pretrained(flux_dir, dtype=torch.float32)
    encoders = FluxEncoders(pipe, max_sequence_length=SEQ)
    with torch.no_grad():
        data = _encode_data(encoders, grid_pairs(pairs, placement, seed, views, frames), side)
        empty = encoders.encode_prompt([""])
    model = DSDTransformer(pipe.transformer).requires_grad_(True).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    cfg = TrainingConfig(steps=steps, batch_size=batch, caption_dropout=0.0, reference_dropout=1.0, logit_mean=logit_mean)
    gen, losses, t0 = torch.Generator().manual_seed(seed), [], time.perf_counter()
    sizes = list(data)
    share = torch.tensor([float(len(data[f][0])) for f in sizes])  # a row size's steps follow its share of the rows
    for step in range(1, steps + 1):
        f = sizes[int(torch.multinomial(share, 1, generator=gen))] if len(sizes) > 1 else sizes[0]
        latents, emb, pooled = data[f]
        idx = torch.randint(0, len(latents), (batch,), generator=gen)
        named = (torch.rand(batch, generator=gen) < 0.5).long()  # 0: the caption names the identity
        b = Batch(cond=torch.zeros_like(latents[idx]), target=latents[idx], prompt_embeds=emb[idx, 1 - named],
                  pooled=pooled[idx, 1 - named], keys=[])  # fmt: skip
        loss, _ = flow_matching_loss(model, b, cfg, gen, empty)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0:
            logger.info("toy base pretraining: step %d/%d, loss %.4f, %.0f s", step, steps, np.mean(losses[-100:]),
                        time.perf_counter() - t0)  # fmt: skip
    model.transformer.eval().requires_grad_(False).save_pretrained(flux_dir / "transformer", safe_serialization=True)
    return {"pretrain_steps": steps, "pretrain_frames": list(frames), "pretrain_loss": float(np.mean(losses[-50:])),
            "pretrain_s": time.perf_counter() - t0}  # fmt: skip


@torch.no_grad()
def grid_agreement(flux_dir: str | Path, n: int = 24, side: int = 128, seed: int = 5) -> dict[str, float]:
    """How consistent the base's own two-panel grids are, i.e. what DSD's copy starts from: ``n`` grids sampled by
    plain FLUX (16 steps) from context-only captions (no identity named), read by the toy judge's reader: CP of
    panel two against panel one, PF of panel two against the caption's context. A base whose panels disagree
    gives the LoRA little to carry a reference with (README "Toy learning loop")."""
    from diffusers import FluxPipeline

    from datagen.teacher import toy_domain as dom
    from tests.support.toy_judge import caption_for
    from tests.support.toy_vision import context_score, identity_score, read_picture, reading_of

    pipe = FluxPipeline.from_pretrained(Path(flux_dir), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    rng, cp, pf = random.Random(seed), [], []
    anyone = dom.all_identities()[0]  # the caption names only the context
    for k in range(n):
        _, (ctx,) = dom.draw_contexts(rng, 1, "grid")
        image = pipe(caption_for(reading_of(anyone, ctx)), height=side, width=2 * side, num_inference_steps=16,
                     guidance_scale=1.0, max_sequence_length=SEQ, generator=torch.Generator().manual_seed(k)).images[0]  # fmt: skip
        first, second = read_picture(image.crop((0, 0, side, side))), read_picture(image.crop((side, 0, 2 * side, side)))
        cp.append(identity_score(first, second))
        pf.append(context_score(second, ctx))
    return {"grid_agreement_cp": float(np.mean(cp)), "grid_agreement_pf": float(np.mean(pf))}
