"""A trained adapter the way users consume it: ComfyUI's own LoRA machinery on ComfyUI's own FLUX.

Two training steps with the tiny config on the tiny FLUX pipeline (the same base weights as the ``tiny_flux``
fixture's ComfyUI model), the adapter the trainer exports, ``DSDAdapterLoader`` + our conditioning and guider
nodes + stock sampling nodes in the real host; the result equals the trainer's own (PEFT, unmerged) model run
through the dsd sampler with the same sigmas, within float tolerance.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from dsd_graph import comfy_dsd_sample, reference_images, reference_sample

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, summary) of a 2-step run; the tiny pipeline's transformer is dsd.tiny.make_tiny_dsd(seed=0)'s."""
    sys.path.insert(0, str(REPO / "tests" / "training"))  # the training tests' fixture writers (not a package)
    from training_fixtures import TINY_TOML, tiny_overrides, write_wds_dataset

    from dsd.tiny import make_tiny_pipeline
    from training.cache import run_cache
    from training.config import load_config
    from training.loop import train

    work = tmp_path_factory.mktemp("train_export")
    flux = make_tiny_pipeline(work / "flux", seed=0)
    data = write_wds_dataset(work / "dataset", n=4)
    cfg = load_config(TINY_TOML, tiny_overrides(flux, data, work, "training.steps=2", "optimizer.lr=5e-2",
                                                "logging.tensorboard=false", "saving.save_every=2"))  # fmt: skip
    run_cache(cfg, progress=False)
    return cfg, train(cfg, resume="none", progress=False)


def trainer_model(cfg, checkpoint: Path | None):
    """The trainer's own model: frozen FLUX + PEFT LoRA + embedder, weights from ``checkpoint`` (None: untrained)."""
    from training.checkpoint import load_trainable
    from training.model import build_model, trainable_parameters

    model = build_model(cfg.model, cfg.network)
    if checkpoint is not None:
        load_trainable(checkpoint, trainable_parameters(model))
    return model.eval()


@pytest.mark.slow
def test_trained_adapter_in_comfyui_matches_trainer(comfy_host, tiny_flux, tiny_vae, text_cond, models_dir, trained):
    from training.checkpoint import latest_checkpoint

    cfg, summary = trained
    assert summary.steps_done == 2 and summary.adapter.is_file()
    shutil.copy(summary.adapter, models_dir.root / "dsd" / "trained_adapter.safetensors")
    pos, text = text_cond(1, seed=0)
    neg, neg_text = text_cond(1, seed=1)
    image = reference_images(1)
    guidance = {"image_guidance": 2.5, "text_guidance": 1.5}
    with torch.inference_mode():
        ours, sigmas, _ = comfy_dsd_sample(comfy_host, tiny_flux(), tiny_vae.comfy, pos, neg, image,
                                           "trained_adapter.safetensors", **guidance)  # fmt: skip
    trainer = trainer_model(cfg, latest_checkpoint(cfg.saving.output_dir))
    ref = reference_sample(trainer, tiny_vae.diffusers, text, neg_text, image, sigmas.clone(), **guidance)
    err = (ours.float() - ref).abs().max().item()
    print(f"trained adapter, ComfyUI vs trainer: max abs err {err:.3e} (latent scale {ref.abs().max():.2f})")
    assert err < TOL
    # and the two steps matter: the untrained model samples something else
    untrained = reference_sample(trainer_model(cfg, None), tiny_vae.diffusers, text, neg_text, image, sigmas.clone(), **guidance)
    assert (untrained - ref).abs().max().item() > 100 * TOL
