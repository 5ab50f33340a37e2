"""Training checkpoints: exact resume, atomic directories, rotation.

A checkpoint ``<output_dir>/checkpoints/step-000123/`` holds everything the next step depends
on: the trainable parameters (``trainable.safetensors``), the EMA copy, the optimizer and LR
scheduler state (``optimizer.pt``, the project's own state, loaded with ``weights_only``), the
RNG states (python, numpy, torch CPU/CUDA and the objective's generator) and the data cursor
(epoch, batch position) in ``state.json``. It is built in a temporary sibling and renamed into
place (``dsd.io.atomic_directory``): ``kill -9`` during a save leaves the previous checkpoint
untouched and only a ``.step-*.tmp`` folder, removed on the next start.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsd.io import atomic_directory, clean_stale_temporaries

logger = logging.getLogger(__name__)

CKPT_RE = re.compile(r"^step-(\d{6,})$")
STATE_FILE = "state.json"
# Test hook: seconds to sleep inside the atomic directory write (after the files, before the rename).
SAVE_SLEEP_ENV = "DSD_TRAINING_TEST_SAVE_SLEEP"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (missing, incomplete, other model)."""


@dataclass
class Cursor:
    """Where the data stream stands: epoch and the next global batch index in that epoch's plan."""

    epoch: int = 0
    position: int = 0
    samples_seen: int = 0


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with state.json), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def rng_state(generator: torch.Generator) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    py = random.getstate()
    np_state = np.random.get_state()
    plain = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"torch_cpu": torch.get_rng_state(), "objective": generator.get_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    return plain, tensors


def set_rng_state(plain: dict[str, Any], tensors: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    py = plain["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = plain["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(tensors["torch_cpu"])
    generator.set_state(tensors["objective"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    cursor: Cursor,
    ema: dict[str, torch.Tensor] | None = None,
    meta: dict[str, Any] | None = None,
    keep_last: int = 0,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``step-<step>`` atomically, then remove all but the newest ``keep_last`` (0 = keep all).

    ``trainable`` must hold full (unsharded) tensors and ``optimizer_state`` (default:
    ``optimizer.state_dict()``) the full optimizer state; under FSDP pass what
    :func:`gather_full_state` returned on rank 0.
    """
    from safetensors.torch import save_file

    root = checkpoint_root(output_dir)
    dest = root / f"step-{step:06d}"
    plain, rng_tensors = rng_state(generator)
    with atomic_directory(dest) as tmp:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        if ema is not None:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        save_file({k: v.contiguous() for k, v in rng_tensors.items()}, str(tmp / "rng.safetensors"))
        opt_state = optimizer_state if optimizer_state is not None else optimizer.state_dict()
        torch.save({"optimizer": opt_state, "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        state = {"step": step, "cursor": cursor.__dict__, "rng": plain, "meta": meta or {}, "time": time.time()}
        (tmp / STATE_FILE).write_text(json.dumps(state, sort_keys=True))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _test_hook_sleep(step)
    if keep_last > 0:
        for _, old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return dest


def _test_hook_sleep(step: int) -> None:
    """``DSD_TRAINING_TEST_SAVE_SLEEP=SECONDS`` or ``STEP:SECONDS``: let a test kill the process mid-save."""
    spec = os.environ.get(SAVE_SLEEP_ENV, "")
    if not spec:
        return
    at, _, seconds = spec.rpartition(":")
    if not at or int(at) == step:
        time.sleep(float(seconds))


@dataclass
class Resumed:
    step: int
    cursor: Cursor
    meta: dict[str, Any]


def load_checkpoint(
    path: str | Path,
    trainable: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    generator: torch.Generator | None = None,
    ema: dict[str, torch.Tensor] | None = None,
) -> Resumed:
    """Restore a checkpoint in place; names/shapes must match the model being trained."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (no {STATE_FILE}); pick another or start fresh")
    state = json.loads((path / STATE_FILE).read_text())
    saved = load_file(str(path / "trainable.safetensors"))
    if set(saved) != set(trainable):
        diff = sorted(set(saved) ^ set(trainable))[:3]
        raise CheckpointError(
            f"{path}: trainable parameters differ from this model (e.g. {diff}); was it made with another "
            "network.rank / target_modules? Resume with the same [network] settings or start a new output_dir"
        )
    with torch.no_grad():
        for name, p in trainable.items():
            if saved[name].shape != p.shape:
                raise CheckpointError(f"{path}: {name} is {tuple(saved[name].shape)}, the model has {tuple(p.shape)}")
            p.copy_(saved[name].to(p.dtype))
    if ema is not None and (path / "ema.safetensors").is_file():
        for k, v in load_file(str(path / "ema.safetensors")).items():
            ema[k].copy_(v)
    if optimizer is not None or scheduler is not None:
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        if optimizer is not None:
            optimizer.load_state_dict(opt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(opt["scheduler"])
    if generator is not None:
        set_rng_state(state["rng"], load_file(str(path / "rng.safetensors")), generator)
    return Resumed(step=int(state["step"]), cursor=Cursor(**state["cursor"]), meta=state.get("meta", {}))


def find_resume(output_dir: str | Path, resume: str, clean: bool = True) -> Path | None:
    """``resume``: "auto" (latest in output_dir, if any), "none", or a checkpoint path.

    ``clean`` removes torn temporary folders first; with several processes only rank 0 should
    (then a barrier), or two ranks race on the same ``rmtree``.
    """
    if clean:
        clean_stale_temporaries(checkpoint_root(output_dir))
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    p = Path(resume)
    if not (p / STATE_FILE).is_file():
        raise CheckpointError(f"--resume {resume}: not a complete checkpoint folder (no {STATE_FILE})")
    return p


# -- FSDP: full state out of / into a sharded model ---------------------------------------------
# Under FSDP every rank holds a shard of each parameter and of its AdamW moments, so neither
# ``named`` nor ``optimizer.state_dict()`` is the full state. torch.distributed.checkpoint's
# state-dict API (the successor of FSDP.full_optim_state_dict, for FSDP1 and FSDP2 alike)
# all-gathers one tensor at a time to rank 0's CPU; ``ignore_frozen_params`` keeps the frozen
# base out of it (gathering a 12 B-parameter base to save a LoRA would cost 24 GB of host memory
# per save). The optimizer state is converted to the same index-keyed form
# ``optimizer.state_dict()`` has without FSDP, so one checkpoint format serves every launch mode.
def _inner_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the real one


def _options(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def gather_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      names: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:  # fmt: skip
    """Collective (call on every rank): full fp32 trainable parameters and optimizer state on rank 0 (empty elsewhere).

    ``names``: the trainable parameter names in the optimizer's order (the checkpoint's index keys).
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    opts = _options(cpu_offload=True, ignore_frozen_params=True)
    params = get_model_state_dict(model, options=opts)
    optim = get_optimizer_state_dict(model, _inner_optimizer(optimizer), options=opts)
    if not params:  # not rank 0
        return {}, {}
    missing = sorted(set(names) - set(params))
    if missing:
        raise CheckpointError(f"FSDP state dict lacks trainable parameters {missing[:3]}; the wrapped model renamed them")
    index = {n: i for i, n in enumerate(names)}
    optim_state = {
        "state": {index[k]: v for k, v in optim["state"].items()},
        "param_groups": [{**g, "params": [index[k] for k in g["params"]]} for g in optim["param_groups"]],
    }
    return {n: params[n].float() for n in names}, optim_state


def load_checkpoint_sharded(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    names: list[str],
    is_main: bool,
    scheduler: Any = None,
    generator: torch.Generator | None = None,
) -> Resumed:
    """Collective twin of :func:`load_checkpoint` for an FSDP-wrapped model (after ``accelerator.prepare``).

    Rank 0 reads the full tensors and broadcasts them; every rank keeps only its shards.
    """
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (no {STATE_FILE}); pick another or start fresh")
    state = json.loads((path / STATE_FILE).read_text())
    params: dict[str, torch.Tensor] = {}
    optim: dict[str, Any] = {}
    opt: dict[str, Any] = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    if is_main:
        params = load_file(str(path / "trainable.safetensors"))
        if set(params) != set(names):
            diff = sorted(set(params) ^ set(names))[:3]
            raise CheckpointError(f"{path}: trainable parameters differ from this model (e.g. {diff}); resume with the "
                                  "same [network] settings or start a new output_dir")  # fmt: skip
        saved = opt["optimizer"]
        optim = {
            "state": {names[int(i)]: v for i, v in saved["state"].items()},
            "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in saved["param_groups"]],
        }
    opts = _options(broadcast_from_rank0=True, strict=False)  # strict=False: the frozen base is not in the file
    # Model and optimizer separately: set_state_dict() treats an empty model dict (ranks > 0) as "optimizer only"
    # and would skip the model broadcast those ranks must join.
    set_model_state_dict(model, params, options=opts)
    set_optimizer_state_dict(model, _inner_optimizer(optimizer), optim, options=opts)
    if scheduler is not None:
        scheduler.load_state_dict(opt["scheduler"])
    if generator is not None:
        set_rng_state(state["rng"], load_file(str(path / "rng.safetensors")), generator)
    return Resumed(step=int(state["step"]), cursor=Cursor(**state["cursor"]), meta=state.get("meta", {}))
