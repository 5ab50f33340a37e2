"""Training in process: overfitting, exact resume, export equivalence with the dsd sampler."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from training_fixtures import TINY_TOML, tiny_overrides

from training.config import load_config
from training.loop import train

pytestmark = pytest.mark.slow  # tiny models, but each test loads encoders / trains a few steps

QUIET = ["logging.tensorboard=false", "training.caption_dropout=0.0", "training.reference_dropout=0.0"]


@pytest.mark.slow
def test_overfit_four_pairs_halves_the_loss(wide_flux, wds_dataset, tmp_path):
    from training.cache import run_cache

    cfg = load_config(TINY_TOML, tiny_overrides(wide_flux, wds_dataset, tmp_path, *QUIET, "training.steps=400",
                      "training.batch_size=4", "training.effective_batch_size=4", "optimizer.lr=3e-3",
                      "network.rank=32", "network.alpha=32.0", "saving.save_every=1000"))  # fmt: skip
    run_cache(cfg, progress=False)
    s = train(cfg, resume="none", progress=False)
    losses = np.array(s.losses)
    assert len(losses) == 400
    assert losses[-10:].mean() <= 0.5 * losses[:10].mean(), (losses[:10].mean(), losses[-10:].mean())


def _trainable(out_dir, file="trainable.safetensors"):
    from safetensors.torch import load_file

    from training.checkpoint import latest_checkpoint

    return load_file(str(latest_checkpoint(out_dir) / file))


def test_resume_matches_uninterrupted_run(tiny_flux, wds_dataset, tiny_cache, tmp_path):
    """Steps 1-6 in one go == steps 1-3, stop, resume from the step-3 checkpoint, steps 4-6 (to 1e-6)."""
    extra = [*QUIET, "training.steps=6", "saving.save_every=3", "saving.keep_last=0", "training.batch_size=2",
             "training.effective_batch_size=4", "training.caption_dropout=0.3", "training.reference_dropout=0.3",
             "training.ema_decay=0.9", "optimizer.scheduler='cosine'", "optimizer.warmup_steps=2",
             f"dataset.cache_dir='{tiny_cache}'"]  # fmt: skip
    a = load_config(TINY_TOML, tiny_overrides(tiny_flux, wds_dataset, tmp_path / "a", *extra))
    full = train(a, resume="none", progress=False)
    assert full.checkpoints == ["step-000003", "step-000006"]
    b = load_config(TINY_TOML, tiny_overrides(tiny_flux, wds_dataset, tmp_path / "b", *extra))
    shutil.copytree(tmp_path / "a/out/checkpoints/step-000003", tmp_path / "b/out/checkpoints/step-000003")
    resumed = train(b, resume="auto", progress=False)
    assert resumed.start_step == 3 and resumed.steps_done == 3
    np.testing.assert_allclose(resumed.losses, full.losses[3:], rtol=0, atol=1e-6)
    for file in ("trainable.safetensors", "ema.safetensors"):  # the EMA's decay depends on its restored step count
        wa, wb = _trainable(tmp_path / "a/out", file), _trainable(tmp_path / "b/out", file)
        assert set(wa) == set(wb)
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6)
    # 6 steps x 2 micro-batches of 2 over 4 pairs (2 batches per epoch) = 6 epochs; the cursor says so
    import json

    state = json.loads((tmp_path / "b/out/checkpoints/step-000006/state.json").read_text())
    assert state["cursor"] == {"epoch": 5, "position": 2, "samples_seen": 24}


def test_exported_adapter_matches_trainer_model(tiny_flux, wds_dataset, tiny_cache, tmp_path):
    """DSDPipeline.from_local(flux, adapter=...) samples what the trainer's own (PEFT, unmerged) model samples."""
    from dsd.pipeline import DSDPipeline
    from dsd.sampler import TextConditioning, make_noise, sample_tokens
    from dsd.tokens import image_ids, pack, text_ids
    from dsd.weights.adapter import load_adapter
    from training.cache import CachedSource
    from training.checkpoint import latest_checkpoint, load_trainable
    from training.model import build_model, trainable_parameters

    cfg = load_config(TINY_TOML, tiny_overrides(tiny_flux, wds_dataset, tmp_path, *QUIET, "training.steps=3",
                      "optimizer.lr=5e-2", f"dataset.cache_dir='{tiny_cache}'"))  # fmt: skip
    s = train(cfg, resume="none", progress=False)
    adapter = load_adapter(s.adapter)
    assert adapter.metadata["dsd_train_steps"] == "3" and adapter.rank == 4
    assert adapter.metadata["dsd_dataset_hash"] == CachedSource(tiny_cache).dataset_hash
    assert float(adapter.c_embedder["c_embedder.weight"].abs().max()) > 0  # it trained
    trainer = build_model(cfg.model, cfg.network)
    load_trainable(latest_checkpoint(cfg.saving.output_dir), trainable_parameters(trainer))
    pipe = DSDPipeline.from_local(tiny_flux, adapter=s.adapter)
    item = CachedSource(tiny_cache).get(0)
    text = TextConditioning(item["prompt_embeds"][None], item["pooled"][None])
    h, w = item["cond"].shape[-2:]
    args = (pack(make_noise(1, h, w, 5)), pack(item["cond"][None]), text, image_ids(h, w), text_ids(16))
    with torch.no_grad():
        ours = sample_tokens(trainer.eval(), *args, steps=4)
        theirs = sample_tokens(pipe.model, *args, steps=4)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    assert (ours - args[0]).abs().max() > 1e-3


def test_release_layout_export_loads(tiny_flux, wds_dataset, tiny_cache, tmp_path):
    from dsd.weights.release import find_release_parts, load_release_lora, load_release_transformer
    from training.checkpoint import latest_checkpoint
    from training.export import export_checkpoint

    cfg = load_config(TINY_TOML, tiny_overrides(tiny_flux, wds_dataset, tmp_path, *QUIET, "training.steps=2",
                      "optimizer.lr=5e-2", f"dataset.cache_dir='{tiny_cache}'"))  # fmt: skip
    train(cfg, resume="none", progress=False)
    out = export_checkpoint(cfg, latest_checkpoint(cfg.saving.output_dir), tmp_path / "x.safetensors",
                            release_dir=tmp_path / "release")  # fmt: skip
    umask = os.umask(0o022)
    os.umask(umask)
    files = [Path(out["adapter"]), *(p for p in Path(out["release"]).rglob("*") if p.is_file())]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}
    tdir, lora_path = find_release_parts(out["release"])
    model = load_release_transformer(tdir)
    from dsd.weights.adapter import load_adapter

    ad = load_adapter(out["adapter"])
    torch.testing.assert_close(model.c_embedder.weight.detach(), ad.c_embedder["c_embedder.weight"])
    lora = load_release_lora(lora_path)
    assert set(lora) == set(ad.lora)
    k = next(iter(lora))
    torch.testing.assert_close(lora[k].delta(), ad.lora[k].delta())


def test_loader_workers_give_the_same_steps(tiny_flux, wds_dataset, tiny_cache, tmp_path):
    """dataset.num_workers = 2 (torch DataLoader workers reading the cache ahead) trains exactly like the main process."""
    extra = [*QUIET, "training.steps=3", "saving.save_every=100", "training.batch_size=1", "training.effective_batch_size=2",
             f"dataset.cache_dir='{tiny_cache}'"]  # fmt: skip
    runs = [train(load_config(TINY_TOML, tiny_overrides(tiny_flux, wds_dataset, tmp_path / f"w{n}", *extra,
                                                        f"dataset.num_workers={n}")), resume="none", progress=False)
            for n in (0, 2)]  # fmt: skip
    assert runs[0].losses == runs[1].losses and len(runs[0].losses) == 3
    a, b = _trainable(tmp_path / "w0/out"), _trainable(tmp_path / "w2/out")
    assert all(torch.equal(a[k], b[k]) for k in a)
