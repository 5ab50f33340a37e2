"""The training loop: accelerate (single GPU, DDP, FSDP), accumulation, EMA, validation, checkpoints.

Data order is a pure function of (seed, epoch): every epoch's batch plan is rebuilt from it and
the cursor (epoch, position) is saved with each checkpoint, so a resumed run reads the same
batches, draws the same noise (the objective's generator state is saved too) and ends with the
same weights as an uninterrupted one. Rank ``r`` of ``W`` takes batch ``position + r`` of the
plan; each micro-step advances the position by ``W``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import CachedSource, Encoders, EncodingSource, collate
from .checkpoint import Cursor, find_resume, load_checkpoint, save_checkpoint
from .config import OptimizerConfig, TrainConfig
from .data import epoch_batches
from .export import write_adapter, write_release_layout
from .model import adapter_from_model, build_model, trainable_parameters
from .objective import flow_matching_loss

logger = logging.getLogger(__name__)


class OptionalDependencyError(ImportError):
    """A feature needs a package that is not installed."""


def make_optimizer(cfg: OptimizerConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    kwargs = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if cfg.name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise OptionalDependencyError(
                "optimizer.name = \"adamw8bit\" needs bitsandbytes (8-bit AdamW), which is not installed: "
                "`pip install bitsandbytes` (CUDA only), or set optimizer.name = \"adamw\""
            ) from exc
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def make_scheduler(cfg: OptimizerConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    warm = max(0, cfg.warmup_steps) if cfg.scheduler != "constant" else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.scheduler in ("constant", "constant_with_warmup"):
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if cfg.scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainSummary:
    output_dir: Path
    steps_done: int = 0
    start_step: int = 0
    resumed_from: str | None = None
    final_loss: float = float("nan")
    first_loss: float = float("nan")
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    seconds_per_step: float = 0.0
    adapter: Path | None = None
    checkpoints: list[str] = field(default_factory=list)
    trainable_params: int = 0
    grad_accumulation: int = 1
    world_size: int = 1
    samples: int = 0


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
    def run(self, model: Any, step: int, writer: Any, out_dir: Path) -> list[Path]:
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
            if self.encoders is None:
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


def _device(cfg: TrainConfig) -> str:
    if cfg.training.device != "auto":
        return cfg.training.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def train(cfg: TrainConfig, resume: str = "auto", progress: bool = True) -> TrainSummary:
    """Train per ``cfg``; resume from the latest checkpoint in ``saving.output_dir`` by default."""
    from accelerate import Accelerator

    t_start = time.perf_counter()
    device = _device(cfg)
    mp = cfg.training.mixed_precision if device != "cpu" else "no"
    accelerator = Accelerator(mixed_precision=mp, cpu=device == "cpu")
    world, rank = accelerator.num_processes, accelerator.process_index
    accum = cfg.grad_accumulation(world)
    out_dir = Path(cfg.saving.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.training.seed)

    dev = accelerator.device
    need_encoders = not cfg.dataset.cache_dir or (cfg.sampling.every > 0 and bool(cfg.model.flux))
    encoders = Encoders(cfg.model.flux, device=dev, max_sequence_length=cfg.model.max_sequence_length) if need_encoders else None
    source = CachedSource(cfg.dataset.cache_dir) if cfg.dataset.cache_dir else EncodingSource(cfg, encoders)

    model = build_model(cfg.model, cfg.network, cfg.training.gradient_checkpointing, device=dev)
    model.to(dev)
    named = trainable_parameters(model)
    optimizer = make_optimizer(cfg.optimizer, list(named.values()))
    scheduler = make_scheduler(cfg.optimizer, optimizer, cfg.training.steps)
    ema = {n: p.detach().clone().float() for n, p in named.items()} if cfg.training.ema_decay > 0 else None
    generator = torch.Generator("cpu").manual_seed(cfg.training.seed * 1_000_003 + rank)

    summary = TrainSummary(output_dir=out_dir, grad_accumulation=accum, world_size=world,
                           trainable_params=sum(p.numel() for p in named.values()), samples=len(source))  # fmt: skip
    cursor = Cursor()
    step = 0
    ckpt = find_resume(out_dir, resume)
    if ckpt is not None:
        r = load_checkpoint(ckpt, named, optimizer, scheduler, generator, ema)
        step, cursor = r.step, r.cursor
        summary.resumed_from = str(ckpt)
        logger.info("resumed from %s (step %d, epoch %d)", ckpt, step, cursor.epoch)
    summary.start_step = step
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    wrapped.train()

    writer = None
    if accelerator.is_main_process and cfg.logging.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=cfg.logging.log_dir or str(out_dir / "logs"))
    validator = Validator(cfg, source, encoders) if cfg.sampling.every > 0 and accelerator.is_main_process else None
    empty_text = source.empty_text
    buckets = list(source.buckets)
    plans: dict[int, list[list[int]]] = {}

    def next_batch() -> list[int]:
        for _ in range(2):
            plan = plans.get(cursor.epoch)
            if plan is None:
                plans.clear()
                plan = plans[cursor.epoch] = epoch_batches(buckets, cfg.training.batch_size, cfg.training.seed, cursor.epoch)
                if len(plan) < world:
                    raise ValueError(f"an epoch has {len(plan)} batches, fewer than the {world} processes; add data")
            if cursor.position + world <= len(plan):
                idx = plan[cursor.position + rank]
                cursor.position += world
                cursor.samples_seen += world * cfg.training.batch_size
                return idx
            cursor.epoch += 1
            cursor.position = 0
        raise RuntimeError("unreachable: a fresh epoch plan has at least one batch per process")

    meta = {"dataset_hash": source.dataset_hash, "config_steps": cfg.training.steps}
    pbar = None
    if progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        pbar = tqdm(total=cfg.training.steps, initial=step, desc="training", unit="step")
    run_start = time.perf_counter()
    while step < cfg.training.steps:
        total = 0.0
        stats: dict[str, float] = {}
        for micro in range(accum):
            batch = collate(source, next_batch())
            sync = micro == accum - 1
            ctx = accelerator.no_sync(wrapped) if (not sync and world > 1) else _null()
            with ctx, accelerator.autocast():
                loss, stats = flow_matching_loss(wrapped, batch, cfg.training, generator, empty_text, device=dev,
                                                 dtype=torch.float32)  # fmt: skip
                accelerator.backward(loss / accum)
            total += float(loss.detach()) / accum
        if cfg.optimizer.max_grad_norm > 0:
            accelerator.clip_grad_norm_(list(named.values()), cfg.optimizer.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            d = cfg.training.ema_decay
            with torch.no_grad():
                for n, p in named.items():
                    ema[n].mul_(d).add_(p.detach().float(), alpha=1 - d)
        step += 1
        if world > 1:
            total = float(accelerator.reduce(torch.tensor(total, device=dev), reduction="mean"))
        summary.losses.append(total)
        if pbar is not None:
            pbar.update(1)
            pbar.set_postfix(loss=f"{total:.4f}")
        if writer is not None and (step % cfg.logging.log_every == 0 or step == 1):
            writer.add_scalar("train/loss", total, step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            writer.add_scalar("train/t_mean", stats.get("t_mean", 0.0), step)
        if step % cfg.saving.save_every == 0 or step == cfg.training.steps:
            if accelerator.is_main_process:
                path = save_checkpoint(out_dir, step, named, optimizer, scheduler, generator, cursor, ema, meta,
                                       keep_last=cfg.saving.keep_last)  # fmt: skip
                summary.checkpoints.append(path.name)
            accelerator.wait_for_everyone()
        if validator is not None and step % cfg.sampling.every == 0:
            validator.run(accelerator.unwrap_model(wrapped), step, writer, out_dir)
    run_seconds = time.perf_counter() - run_start
    if pbar is not None:
        pbar.close()
    summary.steps_done = step - summary.start_step
    summary.seconds_per_step = run_seconds / max(1, summary.steps_done)
    if summary.losses:
        summary.first_loss, summary.final_loss = summary.losses[0], summary.losses[-1]
    if accelerator.is_main_process:
        model_u = accelerator.unwrap_model(wrapped)
        adapter = adapter_from_model(model_u, cfg.network.alpha)
        summary.adapter = write_adapter(adapter, out_dir / cfg.saving.adapter_name, cfg, step, source.dataset_hash)
        if cfg.saving.export_diffusers:
            write_release_layout(adapter, out_dir / "diffusers", cfg, step, source.dataset_hash)
    if writer is not None:
        writer.close()
    accelerator.end_training()
    summary.seconds = time.perf_counter() - t_start
    return summary


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
