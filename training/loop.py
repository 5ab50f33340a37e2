"""The training loop: accelerate (single GPU, DDP, FSDP), accumulation, EMA, validation, checkpoints.

Data order is a pure function of (seed, epoch) and is the same on every rank
(:class:`training.data.BatchStream`): an optimizer step takes ``world x accumulation``
consecutive batches of the epoch's plan, micro-step ``m`` of rank ``r`` the one at
``start + m * world + r``. The objective's random draws are seeded per batch
(:func:`training.data.batch_seed`), not per rank. Hence W processes with batch B give the same
steps as one process with batch B and W-fold accumulation, and a resumed run (the cursor is in
each checkpoint) reads the same batches and draws the same noise as an uninterrupted one, with
any number of processes. Only rank 0 writes checkpoints, the adapter, samples and TensorBoard.
Under FSDP the full trainable and optimizer state is gathered to rank 0 for each save and
broadcast back from it on resume (:mod:`training.checkpoint`).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cache import CachedSource, Encoders, EncodingSource, collate
from .checkpoint import (
    Cursor,
    find_resume,
    gather_full_state,
    load_checkpoint,
    load_checkpoint_sharded,
    save_checkpoint,
)
from .config import ConfigError, OptimizerConfig, TrainConfig
from .data import BatchStream, batch_seed
from .export import adapter_from_trainable, write_adapter, write_release_layout
from .model import adapter_from_model, build_model, trainable_parameters
from .objective import flow_matching_loss
from .validation import Validator

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
    is_main: bool = True  # False on ranks > 0 of a multi-process run (the CLI prints nothing there)
    distributed_type: str = "NO"


def _device(cfg: TrainConfig) -> str:
    if cfg.training.device != "auto":
        return cfg.training.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def train(cfg: TrainConfig, resume: str = "auto", progress: bool = True) -> TrainSummary:
    """Train per ``cfg``; resume from the latest checkpoint in ``saving.output_dir`` by default."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    t_start = time.perf_counter()
    device = _device(cfg)
    mp = cfg.training.mixed_precision if device != "cpu" else "no"
    # cpu=True makes accelerate use DistributedType.MULTI_CPU (DDP over gloo) under torchrun; without it a
    # CUDA-less multi-process launch silently becomes W independent single-process runs.
    accelerator = Accelerator(mixed_precision=mp, cpu=device == "cpu")
    world, rank, is_main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp and cfg.training.ema_decay > 0:
        raise ConfigError("training.ema_decay > 0 is not supported with FSDP (the EMA copy would be sharded); "
                          "set training.ema_decay = 0 or launch with DDP")  # fmt: skip
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
    names = list(named)
    optimizer = make_optimizer(cfg.optimizer, list(named.values()))
    scheduler = make_scheduler(cfg.optimizer, optimizer, cfg.training.steps)
    ema = {n: p.detach().clone().float() for n, p in named.items()} if cfg.training.ema_decay > 0 else None
    # Reseeded per batch (batch_seed) before each micro-step: the same stream on every rank, saved for old checkpoints.
    generator = torch.Generator("cpu").manual_seed(cfg.training.seed)

    summary = TrainSummary(output_dir=out_dir, grad_accumulation=accum, world_size=world, is_main=is_main,
                           distributed_type=str(accelerator.distributed_type.value),
                           trainable_params=sum(p.numel() for p in named.values()), samples=len(source))  # fmt: skip
    cursor = Cursor()
    step = 0
    if is_main:
        find_resume(out_dir, "none")  # removes torn temporaries of a killed save, once
    accelerator.wait_for_everyone()
    ckpt = find_resume(out_dir, resume, clean=False)
    if ckpt is not None and not fsdp:
        r = load_checkpoint(ckpt, named, optimizer, scheduler, generator, ema)
        step, cursor = r.step, r.cursor
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    if ckpt is not None and fsdp:  # the optimizer state must be loaded into the sharded optimizer
        r = load_checkpoint_sharded(ckpt, wrapped, optimizer, names, is_main, scheduler, generator)
        step, cursor = r.step, r.cursor
    if ckpt is not None:
        saved_world = r.meta.get("world_size", world)
        if saved_world != world:
            logger.warning("resuming a %s-process checkpoint with %d processes: the data order continues, the batches "
                           "per step follow the new world size", saved_world, world)  # fmt: skip
        summary.resumed_from = str(ckpt)
        logger.info("resumed from %s (step %d, epoch %d)", ckpt, step, cursor.epoch)
    summary.start_step = step
    wrapped.train()
    # FSDP1 only computes the global grad norm through the wrapper's own clip_grad_norm_, which accelerate calls
    # when it is given all of the model's parameters (frozen ones have no grad and are skipped).
    clip_params = list(wrapped.parameters()) if fsdp else list(named.values())

    writer = None
    if is_main and cfg.logging.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=cfg.logging.log_dir or str(out_dir / "logs"))
    # FSDP forward passes are collective: every rank samples, rank 0 writes. DDP: rank 0 alone, unwrapped.
    validator = Validator(cfg, source, encoders) if cfg.sampling.every > 0 and (is_main or fsdp) else None
    empty_text = source.empty_text
    stream = BatchStream(list(source.buckets), cfg.training.batch_size, cfg.training.seed, world, accum, rank)

    meta = {"dataset_hash": source.dataset_hash, "config_steps": cfg.training.steps, "world_size": world,
            "distributed_type": summary.distributed_type}  # fmt: skip
    pbar = None
    if progress and is_main:
        from tqdm.auto import tqdm

        pbar = tqdm(total=cfg.training.steps, initial=step, desc="training", unit="step")
    run_start = time.perf_counter()
    while step < cfg.training.steps:
        total = 0.0
        stats: dict[str, float] = {}
        for micro, planned in enumerate(stream.next_step(cursor)):
            batch = collate(source, planned.samples)
            generator.manual_seed(batch_seed(cfg.training.seed, planned.epoch, planned.index))
            sync = micro == accum - 1
            ctx = accelerator.no_sync(wrapped) if (not sync and world > 1) else _null()
            with ctx, accelerator.autocast():
                loss, stats = flow_matching_loss(wrapped, batch, cfg.training, generator, empty_text, device=dev,
                                                 dtype=torch.float32)  # fmt: skip
                accelerator.backward(loss / accum)
            total += float(loss.detach()) / accum
        if cfg.optimizer.max_grad_norm > 0:
            accelerator.clip_grad_norm_(clip_params, cfg.optimizer.max_grad_norm)
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
            trainable, opt_state = gather_full_state(wrapped, optimizer, names) if fsdp else (named, None)
            if is_main:
                path = save_checkpoint(out_dir, step, trainable, optimizer, scheduler, generator, cursor, ema, meta,
                                       keep_last=cfg.saving.keep_last, optimizer_state=opt_state)  # fmt: skip
                summary.checkpoints.append(path.name)
            accelerator.wait_for_everyone()
        if validator is not None and step % cfg.sampling.every == 0:
            validator.run(wrapped if fsdp else accelerator.unwrap_model(wrapped), step, writer, out_dir, write=is_main)
    run_seconds = time.perf_counter() - run_start
    if pbar is not None:
        pbar.close()
    summary.steps_done = step - summary.start_step
    summary.seconds_per_step = run_seconds / max(1, summary.steps_done)
    if summary.losses:
        summary.first_loss, summary.final_loss = summary.losses[0], summary.losses[-1]
    full = gather_full_state(wrapped, optimizer, names)[0] if fsdp else None
    if is_main:
        if fsdp:
            adapter = adapter_from_trainable(full, cfg.network.alpha)
        else:
            adapter = adapter_from_model(accelerator.unwrap_model(wrapped), cfg.network.alpha)
        summary.adapter = write_adapter(adapter, out_dir / cfg.saving.adapter_name, cfg, step, source.dataset_hash)
        if cfg.saving.export_diffusers:
            write_release_layout(adapter, out_dir / "diffusers", cfg, step, source.dataset_hash)
    if writer is not None:
        writer.close()
    accelerator.wait_for_everyone()  # ranks > 0 must not tear the process group down while rank 0 still writes
    accelerator.end_training()
    summary.seconds = time.perf_counter() - t_start
    return summary


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
