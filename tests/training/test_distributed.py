"""Multi-process training on CPU: DDP over gloo (torchrun), the per-rank data split, rank-0-only writes,
resume under 2 processes, FSDP checkpoint gathering (torch FSDP2 on CPU), validation samples + TensorBoard.

Equivalence checked: 2 processes x batch 1 == 1 process x batch 1 x 2 accumulation steps (the same effective
batch of 2). The objective draws its noise per batch (``batch_seed``), so both runs compute the same batches
with the same draws; DDP's gradient mean ``(g0 + g1) / 2`` equals the accumulated ``g0 / 2 + g1 / 2`` exactly.
One process with batch 2 is *not* compared: it draws noise for both samples from one stream, which no split
into two batch-1 processes can reproduce (see training/README.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from training_fixtures import REPO, TINY_TOML, tiny_overrides

from training.checkpoint import Cursor
from training.data import BatchStream

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
DDP = ["logging.tensorboard=true", "training.batch_size=1", "training.effective_batch_size=2", "saving.save_every=2",
       "saving.keep_last=0", "training.caption_dropout=0.3", "training.reference_dropout=0.3",
       "optimizer.scheduler='cosine'", "optimizer.warmup_steps=1"]  # fmt: skip


def torchrun(nproc: int, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    return r


def train_cli(nproc: int, overrides: list[str]) -> subprocess.CompletedProcess:
    sets = [a for o in overrides for a in ("--set", o)]
    return torchrun(nproc, "-m", "training", "train", "--config", str(TINY_TOML), "--no-progress", *sets)


def trainable(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ckpt / "trainable.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert set(a) == set(b) and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=atol, msg=k)


# -- the data split (no processes) ---------------------------------------------------------------
@pytest.mark.parametrize("world,accum,n", [(2, 1, 4), (2, 2, 8), (3, 1, 9), (4, 2, 16)])
def test_every_sample_once_per_epoch_across_ranks(world, accum, n):
    buckets = [(32, 32)] * n
    seen = []
    for rank in range(world):
        stream, cursor = BatchStream(buckets, 1, seed=3, world=world, accumulation=accum, rank=rank), Cursor()
        steps = n // (world * accum)
        seen += [s for _ in range(steps) for b in stream.next_step(cursor) for s in b.samples]
        assert (cursor.epoch, cursor.position, cursor.samples_seen) == (0, n, n)
    assert sorted(seen) == list(range(n))  # none lost, none twice
    # W processes x A micro-steps == 1 process x (W * A) micro-steps, batch for batch, step for step
    single = BatchStream(buckets, 1, seed=3, world=1, accumulation=world * accum)
    ranks = [BatchStream(buckets, 1, seed=3, world=world, accumulation=accum, rank=r) for r in range(world)]
    c1, cs = Cursor(), [Cursor() for _ in range(world)]
    for _ in range(3 * n // (world * accum)):  # three epochs
        one = {(b.epoch, b.index, tuple(b.samples)) for b in single.next_step(c1)}
        many = {(b.epoch, b.index, tuple(b.samples)) for r in range(world) for b in ranks[r].next_step(cs[r])}
        assert one == many


def test_ragged_epoch_skips_a_tail_and_never_spans_epochs():
    buckets = [(32, 32)] * 5
    streams = [BatchStream(buckets, 1, seed=0, world=2, rank=r) for r in range(2)]
    cursors = [Cursor(), Cursor()]
    per_epoch: dict[int, list[int]] = {}
    for _ in range(6):  # 2 steps per epoch (4 of 5 batches), 3 epochs
        for s, c in zip(streams, cursors, strict=True):
            for b in s.next_step(c):
                per_epoch.setdefault(b.epoch, []).extend(b.samples)
    assert sorted(per_epoch) == [0, 1, 2]
    for samples in per_epoch.values():
        assert len(samples) == len(set(samples)) == 4
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        BatchStream(buckets, 2, seed=0, world=4).next_step(Cursor())


# -- DDP on CPU (torchrun, gloo) --------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddp_run(tiny_flux, wds_dataset, tiny_cache, tmp_path_factory):
    """One uninterrupted 4-step 2-process run (checkpoints at 2 and 4), shared by the DDP tests."""
    work = tmp_path_factory.mktemp("ddp_full")
    overrides = tiny_overrides(tiny_flux, wds_dataset, work, *DDP, "training.steps=4", f"dataset.cache_dir='{tiny_cache}'")
    r = train_cli(2, overrides)
    return work / "out", overrides, r


@pytest.mark.slow
def test_two_processes_equal_one_process_with_accumulation(ddp_run, tiny_flux, wds_dataset, tiny_cache, tmp_path):
    from training.config import load_config
    from training.loop import train

    out, _, r = ddp_run
    assert "2 x 1" in r.stdout  # processes x accumulation
    # only rank 0 writes: one summary lists the checkpoints, one TensorBoard file, one adapter
    assert r.stdout.count("step-000002, step-000004") == 1, r.stdout
    assert len(list((out / "logs").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert (out / "dsd_adapter.safetensors").is_file()
    import json

    state = json.loads((out / "checkpoints" / "step-000004" / "state.json").read_text())
    assert state["cursor"] == {"epoch": 1, "position": 4, "samples_seen": 8}  # 4 steps x 2 samples, 2 epochs of 4
    assert state["meta"]["world_size"] == 2 and state["meta"]["distributed_type"] == "MULTI_CPU"

    cfg = load_config(TINY_TOML, tiny_overrides(tiny_flux, wds_dataset, tmp_path, *DDP, "training.steps=4",
                      "logging.tensorboard=false", f"dataset.cache_dir='{tiny_cache}'"))  # fmt: skip
    one = train(cfg, resume="none", progress=False)
    assert one.world_size == 1 and one.grad_accumulation == 2
    for step in ("step-000002", "step-000004"):
        assert_same_weights(trainable(tmp_path / "out" / "checkpoints" / step), trainable(out / "checkpoints" / step))
    moved = trainable(out / "checkpoints" / "step-000004")
    assert max(float(v.abs().max()) for k, v in moved.items() if "lora_B" in k) > 1e-4  # it trained


@pytest.mark.slow
def test_resume_under_two_processes_matches_uninterrupted(ddp_run, tmp_path):
    full_out, overrides, _ = ddp_run
    out = tmp_path / "out"
    # steps 1-2 of the same run, then a fresh launch that resumes from step 2 to 4
    shutil.copytree(full_out / "checkpoints" / "step-000002", out / "checkpoints" / "step-000002")
    resumed = [o for o in overrides if not o.startswith("saving.output_dir")] + [f"saving.output_dir='{out}'"]
    r = train_cli(2, resumed)
    assert "2 -> 4" in r.stdout and "step-000002" in r.stdout
    assert_same_weights(trainable(full_out / "checkpoints" / "step-000004"), trainable(out / "checkpoints" / "step-000004"))
    import json

    a, b = (json.loads((d / "checkpoints" / "step-000004" / "state.json").read_text()) for d in (full_out, out))
    assert a["cursor"] == b["cursor"]


# -- FSDP checkpoint state (torch FSDP2 on CPU; accelerate's FSDP needs CUDA) ---------------------------
FSDP_WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from pathlib import Path
    from torch.distributed.fsdp import fully_shard
    from training.config import ModelConfig, NetworkConfig, TrainingConfig, OptimizerConfig
    from training.model import build_model, trainable_parameters
    from training.loop import make_optimizer, make_scheduler
    from training.objective import Batch, flow_matching_loss
    from training.checkpoint import Checkpointer, Cursor, TrainState, gather_full_state
    from accelerate import Accelerator

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    acc = Accelerator(cpu=True)  # MULTI_CPU over the group above: barriers and broadcasts for the Checkpointer
    flux, out = sys.argv[1], Path(sys.argv[2])
    mcfg, net = ModelConfig(flux=flux, base_dtype="float32"), NetworkConfig(rank=4, alpha=4.0)
    tcfg, ocfg = TrainingConfig(caption_dropout=0.0), OptimizerConfig(lr=1e-2, weight_decay=0.0)

    def batch(i):  # the same batch on both ranks: FSDP's gradient mean then equals the single-process gradient
        g = torch.Generator().manual_seed(i)
        return Batch(torch.randn(1, 16, 4, 8, generator=g), torch.randn(1, 16, 4, 8, generator=g),
                     torch.randn(1, 16, 32, generator=g), torch.randn(1, 32, generator=g), ["k"])

    empty = (torch.zeros(1, 16, 32), torch.zeros(1, 32))

    def make(sharded):
        torch.manual_seed(0)
        model = build_model(mcfg, net)
        names = list(trainable_parameters(model))
        if sharded:
            for block in [*model.transformer.transformer_blocks, *model.transformer.single_transformer_blocks]:
                fully_shard(block)
            fully_shard(model)
        opt = make_optimizer(ocfg, list(trainable_parameters(model).values()))
        return model, opt, make_scheduler(ocfg, opt, 10), names

    def steps(model, opt, sched, first, n):
        for i in range(first, first + n):
            loss, _ = flow_matching_loss(model, batch(i), tcfg, torch.Generator().manual_seed(i), empty)
            loss.backward()
            opt.step(); sched.step(); opt.zero_grad()

    plain, popt, psched, names = make(False)
    steps(plain, popt, psched, 0, 2)
    model, opt, sched, _ = make(True)
    steps(model, opt, sched, 0, 2)
    full, optim_state = gather_full_state(model, opt, names)
    if rank == 0:
        ref = popt.state_dict()
        assert set(full) == set(names)
        for n, p in trainable_parameters(plain).items():
            torch.testing.assert_close(full[n], p.detach(), rtol=1e-4, atol=1e-5)  # reduce-scatter rounding
        for i, s in ref["state"].items():
            for k in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(optim_state["state"][i][k], s[k], rtol=1e-4, atol=1e-6)
    state = TrainState(named=trainable_parameters(model), scheduler=sched, cursor=Cursor(0, 2, 2), step=2)
    Checkpointer(acc, state, model, opt, fsdp=True).save(out)  # gathers again, rank 0 writes
    # resume into a fresh sharded model: one more step equals the plain model's third step
    model2, opt2, sched2, _ = make(True)
    state2 = TrainState(named=trainable_parameters(model2), scheduler=sched2)
    Checkpointer(acc, state2, model2, opt2, fsdp=True).load(out / "checkpoints" / "step-000002")
    assert state2.step == 2 and state2.cursor == Cursor(0, 2, 2) and sched2.last_epoch == 2
    steps(model2, opt2, sched2, 2, 1)
    steps(plain, popt, psched, 2, 1)
    full2, _ = gather_full_state(model2, opt2, names)
    if rank == 0:
        for n, p in trainable_parameters(plain).items():
            torch.testing.assert_close(full2[n], p.detach(), rtol=1e-4, atol=1e-5)
        print("FSDP-CHECKPOINT-OK", len(full2), flush=True)
    # Gloo's worker threads can abort (std::terminate) when FSDP state still holds their work objects at
    # interpreter teardown: drop every sharded object, shut the group down while Python is alive, skip finalizers.
    del model, opt, sched, model2, opt2, sched2, state, state2, acc
    import gc, os
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)
""")


@pytest.mark.slow
def test_fsdp_checkpoint_gathers_and_restores_full_state(tiny_flux, tmp_path):
    """Checkpointer's FSDP path (gather_full_state / load_sharded_state) on a real FSDP2-sharded tiny DSD model (2 CPU ranks, gloo)."""
    script = tmp_path / "fsdp_worker.py"
    script.write_text(FSDP_WORKER)
    r = torchrun(2, str(script), str(tiny_flux), str(tmp_path / "out"))
    assert "FSDP-CHECKPOINT-OK" in r.stdout, r.stdout[-2000:]


# -- validation sampling ------------------------------------------------------------------------------
@pytest.mark.slow
def test_validation_sampling_writes_pngs_and_tensorboard(tiny_flux, wds_dataset, tiny_cache, tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from training.cache import CachedSource
    from training.config import load_config
    from training.loop import train

    cfg = load_config(TINY_TOML, tiny_overrides(tiny_flux, wds_dataset, tmp_path, "training.steps=4",
                      "sampling.every=2", "sampling.from_dataset=2", "sampling.steps=2", "logging.log_every=2",
                      "saving.save_every=100", f"dataset.cache_dir='{tiny_cache}'"))  # fmt: skip
    train(cfg, resume="none", progress=False)
    keys = CachedSource(tiny_cache).keys[:2]
    pngs = sorted(p.name for p in (tmp_path / "out" / "samples").glob("*.png"))
    assert pngs == sorted(f"step-{s:06d}-{k}.png" for s in (2, 4) for k in keys)
    with Image.open(tmp_path / "out" / "samples" / pngs[0]) as im:
        assert im.size == (64, 32)  # one [32, 2 x 32] canvas
        assert np.asarray(im).std() > 0
    events = list((tmp_path / "out" / "logs").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/lr", "train/t_mean"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 4]
    assert {f"samples/{k}" for k in keys} <= set(tags["images"])
    assert [e.step for e in acc.Images(f"samples/{keys[0]}")] == [2, 4]
