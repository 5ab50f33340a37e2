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

Libraries do the generic parts: ``accelerator.accumulate`` (gradient sync only on a step's last
micro-step, loss scaled by the accumulation), ``accelerator.save_state``/``load_state``
(:class:`training.checkpoint.Checkpointer`), diffusers' ``EMAModel`` and ``get_scheduler``.
Our own data loader stays: accelerate's would shard per rank and reseed per process, which
breaks the rank-independent plan above.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cache import CachedSource, Encoders, EncodingSource, batches
from .checkpoint import Checkpointer, TrainState, find_resume, gather_full_state
from .config import ConfigError, OptimizerConfig, TrainConfig
from .data import BatchStream, batch_seed
from .export import adapter_from_trainable, write_adapter, write_release_layout
from .model import OptionalDependencyError, adapter_from_model, build_model, trainable_parameters
from .objective import Batch, flow_matching_loss
from .validation import BEST_ADAPTER, Validator

logger = logging.getLogger(__name__)


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
    """diffusers' schedules (a LambdaLR: its state is the step count, saved with each checkpoint)."""
    from diffusers.optimization import get_scheduler

    warm = max(0, cfg.warmup_steps) if cfg.scheduler != "constant" else 0
    return get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=warm, num_training_steps=total_steps)


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


@dataclass
class Run:
    """One training run's parts, built by :func:`_setup`."""

    cfg: TrainConfig
    accelerator: Any
    fsdp: bool
    source: CachedSource | EncodingSource
    encoders: Encoders | None
    model: torch.nn.Module  # as prepared by accelerate (DDP / FSDP wrapper, or the model itself)
    optimizer: Any
    state: TrainState
    checkpointer: Checkpointer
    stream: BatchStream
    clip_params: list[torch.nn.Parameter]
    summary: TrainSummary
    generator: torch.Generator = field(default_factory=lambda: torch.Generator("cpu"))
    writer: Any = None
    validator: Validator | None = None
    batches: Iterator[Batch] | None = None  # in the order stream.next_step plans them, from the resumed cursor

    @property
    def out_dir(self) -> Path:
        return self.summary.output_dir


def _device(cfg: TrainConfig) -> str:
    if cfg.training.device != "auto":
        return cfg.training.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def train(cfg: TrainConfig, resume: str = "auto", progress: bool = True) -> TrainSummary:
    """Train per ``cfg``; resume from the latest checkpoint in ``saving.output_dir`` by default."""
    t_start = time.perf_counter()
    run = _setup(cfg)
    _resume(run, resume)
    run.batches = _batches(run)
    pbar = _progress_bar(run, progress)
    run_start = time.perf_counter()
    while run.state.step < cfg.training.steps:
        loss, stats = _optimizer_step(run)
        _log(run, loss, stats, pbar)
        _save_and_validate(run)
    if pbar is not None:
        pbar.close()
    summary = run.summary
    summary.steps_done = run.state.step - summary.start_step
    summary.seconds_per_step = (time.perf_counter() - run_start) / max(1, summary.steps_done)
    if summary.losses:
        summary.first_loss, summary.final_loss = summary.losses[0], summary.losses[-1]
    _finish(run)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    device = _device(cfg)
    mp = cfg.training.mixed_precision if device != "cpu" else "no"
    # cpu=True makes accelerate use DistributedType.MULTI_CPU (DDP over gloo) under torchrun; without it a
    # CUDA-less multi-process launch silently becomes W independent single-process runs.
    accelerator = Accelerator(mixed_precision=mp, cpu=device == "cpu")
    # Known only now (it depends on the world size): accumulate() and backward() read it at each call.
    accelerator.gradient_accumulation_steps = cfg.grad_accumulation(accelerator.num_processes)
    return accelerator


def _setup(cfg: TrainConfig) -> Run:
    """Accelerator, data source, model, optimizer, scheduler, EMA, checkpointer, writers."""
    from accelerate.utils import DistributedType, set_seed

    accelerator = _accelerator(cfg)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp and cfg.training.ema_decay > 0:
        raise ConfigError("training.ema_decay > 0 is not supported with FSDP (the EMA copy would be sharded); "
                          "set training.ema_decay = 0 or launch with DDP")  # fmt: skip
    out_dir = Path(cfg.saving.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.training.seed)
    dev = accelerator.device
    need_encoders = not cfg.dataset.cache_dir or (cfg.sampling.every > 0 and bool(cfg.model.flux))
    encoders = Encoders(cfg.model.flux, device=dev, max_sequence_length=cfg.model.max_sequence_length) if need_encoders else None
    source = CachedSource(cfg.dataset.cache_dir) if cfg.dataset.cache_dir else EncodingSource(cfg, encoders)
    if source.reference_mix != cfg.training.reference_mix:
        raise ConfigError(f"{cfg.dataset.cache_dir}: the cache was made for training.references {source.reference_mix}, "
                          f"the config says {cfg.training.reference_mix}; cache again into a new dataset.cache_dir")  # fmt: skip

    model = build_model(cfg.model, cfg.network, cfg.training.gradient_checkpointing, device=dev).to(dev)
    named = trainable_parameters(model)
    optimizer = make_optimizer(cfg.optimizer, list(named.values()))
    state = TrainState(named=named, scheduler=make_scheduler(cfg.optimizer, optimizer, cfg.training.steps),
                       ema=_make_ema(cfg, named), meta=_meta(cfg, source, accelerator))  # fmt: skip
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    world, accum = accelerator.num_processes, accelerator.gradient_accumulation_steps
    summary = TrainSummary(output_dir=out_dir, grad_accumulation=accum, world_size=world, is_main=accelerator.is_main_process,
                           distributed_type=str(accelerator.distributed_type.value),
                           trainable_params=sum(p.numel() for p in named.values()), samples=len(source))  # fmt: skip
    return Run(
        cfg=cfg, accelerator=accelerator, fsdp=fsdp, source=source, encoders=encoders, model=wrapped,
        optimizer=optimizer, state=state, checkpointer=Checkpointer(accelerator, state, wrapped, optimizer, fsdp),
        stream=BatchStream(list(source.buckets), cfg.training.batch_size, cfg.training.seed, world, accum,
                           accelerator.process_index, source.variants),
        # FSDP1 only computes the global grad norm through the wrapper's own clip_grad_norm_, which accelerate
        # calls when it is given all of the model's parameters (frozen ones have no grad and are skipped).
        clip_params=list(wrapped.parameters()) if fsdp else list(named.values()),
        summary=summary, writer=_writer(cfg, accelerator, out_dir),
        # FSDP forward passes are collective: every rank samples, rank 0 writes. DDP: rank 0 alone, unwrapped.
        validator=Validator(cfg, source, encoders) if cfg.sampling.every > 0 and (accelerator.is_main_process or fsdp) else None,
    )  # fmt: skip


def _make_ema(cfg: TrainConfig, named: dict[str, torch.nn.Parameter]):
    """diffusers' EMAModel: decay (1 + n) / (10 + n) after n updates, capped at training.ema_decay."""
    if cfg.training.ema_decay <= 0:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(list(named.values()), decay=cfg.training.ema_decay, foreach=True)


def _meta(cfg: TrainConfig, source: CachedSource | EncodingSource, accelerator: Any) -> dict[str, Any]:
    return {"dataset_hash": source.dataset_hash, "config_steps": cfg.training.steps,
            "world_size": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type.value)}  # fmt: skip


def _writer(cfg: TrainConfig, accelerator: Any, out_dir: Path):
    if not (accelerator.is_main_process and cfg.logging.tensorboard):
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=cfg.logging.log_dir or str(out_dir / "logs"))


def _resume(run: Run, resume: str) -> None:
    acc = run.accelerator
    if acc.is_main_process:
        find_resume(run.out_dir, "none")  # removes torn temporaries of a killed save, once
    acc.wait_for_everyone()
    ckpt = find_resume(run.out_dir, resume, clean=False)
    if ckpt is not None:
        saved = run.checkpointer.load(ckpt)
        saved_world = saved.get("world_size", acc.num_processes)
        if saved_world != acc.num_processes:
            logger.warning("resuming a %s-process checkpoint with %d processes: the data order continues, the batches "
                           "per step follow the new world size", saved_world, acc.num_processes)  # fmt: skip
        run.summary.resumed_from = str(ckpt)
        logger.info("resumed from %s (step %d, epoch %d)", ckpt, run.state.step, run.state.cursor.epoch)
    run.summary.start_step = run.state.step
    run.model.train()


def _batches(run: Run) -> Iterator[Batch]:
    """This rank's batches from the current cursor on, read ahead by ``dataset.num_workers`` loader workers."""
    s, cursor = run.stream, copy.copy(run.state.cursor)
    ahead = BatchStream(s.buckets, s.batch_size, s.seed, s.world, s.accumulation, s.rank, s.variants)  # its own plan cache

    def plan() -> Iterator[list[int]]:
        while True:
            yield from (b.samples for b in ahead.next_step(cursor))

    return batches(run.source, plan(), run.cfg.dataset.num_workers, pin_memory=run.accelerator.device.type == "cuda")


def _progress_bar(run: Run, progress: bool):
    if not (progress and run.accelerator.is_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=run.cfg.training.steps, initial=run.state.step, desc="training", unit="step")


def _micro_steps(run: Run) -> tuple[float, dict[str, float]]:
    """Forward/backward over this step's batches; returns the mean loss (this rank) and the last stats."""
    acc, cfg = run.accelerator, run.cfg.training
    total, stats = 0.0, {}
    for planned in run.stream.next_step(run.state.cursor):
        batch = next(run.batches)
        run.generator.manual_seed(batch_seed(cfg.seed, planned.epoch, planned.index))
        with acc.accumulate(run.model), acc.autocast():
            loss, stats = flow_matching_loss(run.model, batch, cfg, run.generator, run.source.empty_text, device=acc.device,
                                             dtype=torch.float32)  # fmt: skip
            acc.backward(loss)  # divided by the accumulation inside
        total += float(loss.detach()) / acc.gradient_accumulation_steps
    return total, stats


def _optimizer_step(run: Run) -> tuple[float, dict[str, float]]:
    """One optimizer step; returns the loss averaged over micro-steps and ranks."""
    acc, state = run.accelerator, run.state
    total, stats = _micro_steps(run)
    if run.cfg.optimizer.max_grad_norm > 0:
        acc.clip_grad_norm_(run.clip_params, run.cfg.optimizer.max_grad_norm)
    run.optimizer.step()
    state.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if state.ema is not None:
        state.ema.step(list(state.named.values()))
    state.step += 1
    if acc.num_processes > 1:
        total = float(acc.reduce(torch.tensor(total, device=acc.device), reduction="mean"))
    return total, stats


def _log(run: Run, loss: float, stats: dict[str, float], pbar: Any) -> None:
    step = run.state.step
    run.summary.losses.append(loss)
    if pbar is not None:
        pbar.update(1)
        pbar.set_postfix(loss=f"{loss:.4f}")
    if run.writer is not None and (step % run.cfg.logging.log_every == 0 or step == 1):
        run.writer.add_scalar("train/loss", loss, step)
        run.writer.add_scalar("train/lr", run.state.scheduler.get_last_lr()[0], step)
        run.writer.add_scalar("train/t_mean", stats.get("t_mean", 0.0), step)


def _save_and_validate(run: Run) -> None:
    cfg, step = run.cfg, run.state.step
    if step % cfg.saving.save_every == 0 or step == cfg.training.steps:
        path = run.checkpointer.save(run.out_dir, keep_last=cfg.saving.keep_last)
        if path is not None:
            run.summary.checkpoints.append(path.name)
    if run.validator is not None and step % cfg.sampling.every == 0:
        model = run.model if run.fsdp else run.accelerator.unwrap_model(run.model)
        with _shipped_weights(run):  # validation judges, and best.safetensors holds, what the run would ship
            run.validator.run(model, step, run.writer, run.out_dir, write=run.accelerator.is_main_process)
            if run.validator.improved(collective=run.fsdp):
                adapter = _adapter(run)
                if adapter is not None:
                    write_adapter(adapter, run.out_dir / BEST_ADAPTER, cfg, step, run.source.dataset_hash, _trained_references(run))
                    run.validator.commit_best()


@contextlib.contextmanager
def _shipped_weights(run: Run) -> Iterator[None]:
    """The trainable weights swapped for their EMA (training.ema_decay > 0) while a run samples or writes an adapter,
    as diffusers' training scripts ship the EMA; the live weights come back after, so training and resume go on as
    if nothing happened. Without an EMA, the live weights."""
    ema, params = run.state.ema, list(run.state.named.values())
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def _adapter(run: Run):
    """The DSD adapter from the current weights on the main process (None elsewhere); collective under FSDP."""
    full = gather_full_state(run.model, run.optimizer, list(run.state.named))[0] if run.fsdp else None
    if not run.accelerator.is_main_process:
        return None
    if full is not None:
        return adapter_from_trainable(full, run.cfg.network.alpha)
    return adapter_from_model(run.accelerator.unwrap_model(run.model), run.cfg.network.alpha)


def _trained_references(run: Run) -> list[int]:
    """The k this run's data trains at (a mix of {1, 2, 3} over pairs alone trains k = 1 only)."""
    from .cache import bucket_references

    return sorted({bucket_references(b) for b in run.source.buckets})


def _finish(run: Run) -> None:
    """The adapter (and the release layout) from the final weights, then the process group's teardown."""
    acc, cfg, step = run.accelerator, run.cfg, run.state.step
    with _shipped_weights(run):
        adapter = _adapter(run)
    if adapter is not None:
        dhash = run.source.dataset_hash
        run.summary.adapter = write_adapter(adapter, run.out_dir / cfg.saving.adapter_name, cfg, step, dhash, _trained_references(run))
        if cfg.saving.export_diffusers:
            write_release_layout(adapter, run.out_dir / "diffusers", cfg, step, dhash)
    if run.writer is not None:
        run.writer.close()
    acc.wait_for_everyone()  # ranks > 0 must not tear the process group down while rank 0 still writes
    acc.end_training()
