"""Training checkpoints: accelerate's ``save_state`` / ``load_state`` inside atomic, rotated step folders.

``<output_dir>/checkpoints/step-000123/`` holds everything the next step depends on:

* ``trainable.safetensors`` (+ ``ema.safetensors``): the trainable parameters (LoRA + condition embedder)
  and their EMA, by name. Our ``save_state`` pre-hook writes them and takes the model out of accelerate's
  list: accelerate would write the whole model, frozen 12 B base included, into every checkpoint.
* ``optimizer.bin`` and ``random_states_<rank>.pkl``: accelerate's own files.
* ``custom_checkpoint_0.pkl`` (LR scheduler) and ``custom_checkpoint_1.pkl`` (EMA counters), the objects
  given to ``accelerator.register_for_checkpointing``. The scheduler is not ``prepare``d: accelerate's
  wrapper steps it once per process per optimizer step, which would break "W processes == 1 process with
  W-fold accumulation".
* ``state.json``: step, data cursor and run metadata, readable without unpickling (export, rotation).

The folder is built in a temporary sibling that every rank writes into (accelerate writes one RNG file
per rank) and rank 0 renames into place (``dsd.io.atomic_directory``): ``kill -9`` during a save leaves
the previous checkpoint untouched and only a ``.step-*.tmp`` folder, removed on the next start. Exact
resume needs no RNG state: the objective's generator is reseeded per batch (:func:`training.data.batch_seed`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dsd.io import atomic_directory, clean_stale_temporaries

logger = logging.getLogger(__name__)

CKPT_RE = re.compile(r"^step-(\d{6,})$")
STATE_FILE = "state.json"
TRAINABLE_FILE = "trainable.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.bin"  # accelerate's name (OPTIMIZER_NAME + ".bin")

# Called as hook(step, temporary_folder) on rank 0 once a checkpoint's files are complete, before the folder
# is renamed into place. Tests append to it to stop a process in the middle of a save.
BEFORE_COMMIT: list[Callable[[int, Path], None]] = []


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (missing, incomplete, other model)."""


@dataclass
class Cursor:
    """Where the data stream stands: epoch and the next global batch index in that epoch's plan."""

    epoch: int = 0
    position: int = 0
    samples_seen: int = 0


@dataclass
class TrainState:
    """What a checkpoint restores besides the optimizer and what the loop advances."""

    named: dict[str, torch.nn.Parameter]  # trainable parameters, in the optimizer's order
    scheduler: Any
    ema: Any = None  # diffusers.training_utils.EMAModel over named.values(), or None
    cursor: Cursor = field(default_factory=Cursor)
    step: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


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


def rotate(output_dir: str | Path, keep_last: int) -> None:
    """Remove all but the newest ``keep_last`` complete checkpoints (0 = keep all)."""
    if keep_last > 0:
        for _, old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def read_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (no {STATE_FILE}); pick another or start fresh")
    if not (path / OPTIMIZER_FILE).is_file():
        raise CheckpointError(f"{path}: no {OPTIMIZER_FILE}; it was written by an older trainer. Resume with that "
                              "version, or start over (--resume none or a new saving.output_dir)")  # fmt: skip
    return json.loads((path / STATE_FILE).read_text())


def load_trainable(path: str | Path, named: dict[str, torch.nn.Parameter], file: str = TRAINABLE_FILE) -> None:
    """Copy a checkpoint's trainable tensors into ``named`` (same names and shapes, or CheckpointError)."""
    from safetensors.torch import load_file

    saved = load_file(str(Path(path) / file))
    _check_names(path, saved, named)
    with torch.no_grad():
        for name, p in named.items():
            if saved[name].shape != p.shape:
                raise CheckpointError(f"{path}: {name} is {tuple(saved[name].shape)}, the model has {tuple(p.shape)}")
            p.copy_(saved[name].to(p.dtype))


def _check_names(path: str | Path, saved: dict[str, Any] | list[str], names: dict[str, Any] | list[str]) -> None:
    if set(saved) != set(names):
        diff = sorted(set(saved) ^ set(names))[:3]
        raise CheckpointError(
            f"{path}: trainable parameters differ from this model (e.g. {diff}); was it made with another "
            "network.rank / target_modules? Resume with the same [network] settings or start a new output_dir"
        )


def _fp32_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}


class _EmaCounters:
    """The EMA's settings and step counter for ``register_for_checkpointing``; its tensors go to ema.safetensors."""

    def __init__(self, state: TrainState) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        if self.state.ema is None:
            return {}
        return {k: v for k, v in self.state.ema.state_dict().items() if k != "shadow_params"}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if self.state.ema is not None and saved:
            self.state.ema.load_state_dict(saved)


class Checkpointer:
    """Saves and restores a :class:`TrainState` with ``accelerator`` (collective: call on every rank).

    Under FSDP accelerate's ``save_state`` writes the whole sharded model, frozen base included; there the
    trainable parameters and AdamW state are gathered to rank 0 with ``torch.distributed.checkpoint``
    (:func:`gather_full_state`) and written to the same files, so one format serves every launch mode.
    """

    def __init__(self, accelerator: Any, state: TrainState, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 fsdp: bool = False) -> None:  # fmt: skip
        self.acc, self.state, self.model, self.optimizer, self.fsdp = accelerator, state, model, optimizer, fsdp
        self.custom = [state.scheduler, _EmaCounters(state)]  # index = custom_checkpoint_<i>.pkl
        accelerator.register_for_checkpointing(*self.custom)
        accelerator.register_save_state_pre_hook(self._save_hook)
        accelerator.register_load_state_pre_hook(self._load_hook)

    # -- saving ----------------------------------------------------------------------------------
    def save(self, output_dir: str | Path, keep_last: int = 0) -> Path | None:
        """Write ``step-<step>`` atomically, then keep the newest ``keep_last`` (0 = all). Rank 0 gets the path."""
        dest = checkpoint_root(output_dir) / f"step-{self.state.step:06d}"
        gathered = gather_full_state(self.model, self.optimizer, list(self.state.named)) if self.fsdp else None
        if self.acc.is_main_process:
            with atomic_directory(dest) as tmp:
                self._write(self._shared(tmp), gathered)
            rotate(output_dir, keep_last)
        else:
            self._write(self._shared(None), gathered)
        self.acc.wait_for_everyone()
        return dest if self.acc.is_main_process else None

    def _shared(self, tmp: Path | None) -> Path:
        """Rank 0's temporary folder, on every rank."""
        box = [str(tmp) if tmp is not None else None]
        if self.acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(box)
        return Path(box[0])

    def _write(self, tmp: Path, gathered: tuple[dict[str, torch.Tensor], dict[str, Any]] | None) -> None:
        if gathered is None:
            self.acc.save_state(str(tmp))
        elif self.acc.is_main_process:
            self._write_gathered(tmp, *gathered)
        self.acc.wait_for_everyone()  # every rank's files are in tmp before rank 0 seals it
        if not self.acc.is_main_process:
            return
        state = {"step": self.state.step, "cursor": self.state.cursor.__dict__, "meta": self.state.meta, "time": time.time()}
        (tmp / STATE_FILE).write_text(json.dumps(state, sort_keys=True))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        for hook in BEFORE_COMMIT:
            hook(self.state.step, tmp)

    def _save_hook(self, models: list, weights: list, output_dir: str) -> None:
        weights.clear()  # accelerate must not write model.safetensors (the full model)
        if self.acc.is_main_process:
            self._write_tensors(Path(output_dir), _fp32_cpu(self.state.named))

    def _write_tensors(self, folder: Path, trainable: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        save_file(trainable, str(folder / TRAINABLE_FILE))
        if self.state.ema is not None:
            shadow = dict(zip(self.state.named, self.state.ema.shadow_params, strict=True))
            save_file(_fp32_cpu(shadow), str(folder / EMA_FILE))

    def _write_gathered(self, tmp: Path, params: dict[str, torch.Tensor], optim_state: dict[str, Any]) -> None:
        from accelerate.checkpointing import save_custom_state

        self._write_tensors(tmp, params)
        torch.save(optim_state, tmp / OPTIMIZER_FILE)
        for i, obj in enumerate(self.custom):
            save_custom_state(obj, str(tmp), i)

    # -- loading ---------------------------------------------------------------------------------
    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore ``path`` into the state, the optimizer and the RNGs; returns the checkpoint's metadata."""
        saved = read_state(path)
        if self.fsdp:
            self._load_gathered(Path(path))
        else:
            self.acc.load_state(str(path))
        # Each optimizer step runs all its micro-steps, so accelerate's micro-step counter restarts at a step
        # boundary; its saved value belongs to the old accumulation, which another world size changes.
        self.acc.step = 0
        self.state.step, self.state.cursor = int(saved["step"]), Cursor(**saved["cursor"])
        return saved.get("meta", {})

    def _load_hook(self, models: list, input_dir: str) -> None:
        models.clear()  # there is no model.safetensors; the trainable tensors are restored here
        self._load_tensors(Path(input_dir))

    def _load_tensors(self, path: Path) -> None:
        load_trainable(path, self.state.named)
        ema = self.state.ema
        if ema is None:
            return
        if (path / EMA_FILE).is_file():
            from safetensors.torch import load_file

            shadow = load_file(str(path / EMA_FILE))
            _check_names(path, shadow, self.state.named)
            ema.shadow_params = [shadow[n].to(p.device, p.dtype) for n, p in self.state.named.items()]
        else:
            logger.warning("%s has no EMA; the EMA restarts from the resumed weights", path)
            ema.shadow_params = [p.detach().clone() for p in self.state.named.values()]

    def _load_gathered(self, path: Path) -> None:
        from accelerate.checkpointing import load_custom_state

        load_sharded_state(path, self.model, self.optimizer, list(self.state.named), self.acc.is_main_process)
        for i, obj in enumerate(self.custom):
            load_custom_state(obj, str(path), i)


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


def load_sharded_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, names: list[str],
                       is_main: bool) -> None:  # fmt: skip
    """Collective: rank 0 reads a checkpoint's parameters and optimizer state and broadcasts them; each rank keeps its shards."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    path = Path(path)
    params: dict[str, torch.Tensor] = {}
    optim: dict[str, Any] = {}
    if is_main:
        params = load_file(str(path / TRAINABLE_FILE))
        _check_names(path, params, names)
        saved = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        optim = {
            "state": {names[int(i)]: v for i, v in saved["state"].items()},
            "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in saved["param_groups"]],
        }
    opts = _options(broadcast_from_rank0=True, strict=False)  # strict=False: the frozen base is not in the file
    # Model and optimizer separately: set_state_dict() treats an empty model dict (ranks > 0) as "optimizer only"
    # and would skip the model broadcast those ranks must join.
    set_model_state_dict(model, params, options=opts)
    set_optimizer_state_dict(model, _inner_optimizer(optimizer), optim, options=opts)
