"""Step time reading the latent/text cache vs encoding every pair on the fly (VAE + CLIP + T5), one run.

Tiny FLUX pipeline from dsd.tiny (so the ratio understates the real one: FLUX.1-dev's VAE and T5-XXL
cost far more relative to a step than the tiny encoders do), 8 toy pairs, batch 2, 20 steps each.
Run: .venv/bin/python -m benchmarks.training_cache_ratio
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from dsd.tiny import make_tiny_pipeline
from tests.training.training_fixtures import write_wds_dataset
from training.cache import run_cache
from training.config import load_config
from training.loop import train

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)
STEPS = 20


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    flux = make_tiny_pipeline(tmp / "flux")
    data = write_wds_dataset(tmp / "data", n=8)
    base = [f"model.flux='{flux}'", f"dataset.paths=['{data}']", f"training.steps={STEPS}", "saving.save_every=1000",
            "logging.tensorboard=false", "training.batch_size=2", "training.effective_batch_size=2"]  # fmt: skip
    toml = ROOT / "training" / "configs" / "tiny.toml"
    cached_cfg = load_config(toml, [*base, f"dataset.cache_dir='{tmp / 'cache'}'", f"saving.output_dir='{tmp / 'a'}'"])
    cache = run_cache(cached_cfg, progress=False)
    cached = train(cached_cfg, resume="none", progress=False)
    fly = train(load_config(toml, [*base, "dataset.cache_dir=''", f"saving.output_dir='{tmp / 'b'}'"]), resume="none", progress=False)
    print(f"tiny FLUX, {STEPS} steps of batch 2, CPU 1 thread")
    print(f"cache build: {cache.seconds:.2f} s for {cache.samples_written} pairs (incl. loading encoders)")
    print(f"step time cached:     {cached.seconds_per_step * 1e3:8.1f} ms")
    print(f"step time on the fly: {fly.seconds_per_step * 1e3:8.1f} ms")
    print(f"ratio on-the-fly / cached: {fly.seconds_per_step / cached.seconds_per_step:.1f}x")
    same = all(abs(a - b) < 1e-4 for a, b in zip(cached.losses, fly.losses, strict=True))
    print(f"same losses both ways (cache is exact): {same}")


if __name__ == "__main__":
    main()
