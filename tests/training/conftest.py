from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# Tiny models are dominated by thread-pool overhead; one thread is faster and steadier on a busy CPU.
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))
from training_fixtures import TINY_TOML, tiny_overrides  # noqa: E402 - needs the path above


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> Path:
    from dsd.tiny import make_tiny_pipeline

    return make_tiny_pipeline(tmp_path_factory.mktemp("tinyflux") / "flux", seed=0)


@pytest.fixture(scope="session")
def wide_flux(tiny_flux, tmp_path_factory) -> Path:
    """The tiny pipeline with a wider transformer (hidden 128): room to overfit 64-channel tokens."""
    import shutil

    from dsd.tiny import TINY_TRANSFORMER_CONFIG, make_tiny_transformer

    out = tmp_path_factory.mktemp("wideflux") / "flux"
    shutil.copytree(tiny_flux, out)
    shutil.rmtree(out / "transformer")
    cfg = {**TINY_TRANSFORMER_CONFIG, "attention_head_dim": 32, "num_attention_heads": 4, "axes_dims_rope": [8, 12, 12]}
    make_tiny_transformer(0, cfg).save_pretrained(out / "transformer")
    return out


@pytest.fixture(scope="session")
def wds_dataset(tmp_path_factory) -> Path:
    from training_fixtures import write_wds_dataset

    return write_wds_dataset(tmp_path_factory.mktemp("wds") / "dataset", n=4)


@pytest.fixture(scope="session")
def tiny_cache(tiny_flux, wds_dataset, tmp_path_factory) -> Path:
    """A finished cache of the 4-pair dataset (shared by the training tests)."""
    from training.cache import run_cache
    from training.config import load_config

    work = tmp_path_factory.mktemp("cachework")
    cfg = load_config(TINY_TOML, tiny_overrides(tiny_flux, wds_dataset, work))
    run_cache(cfg, progress=False)
    return work / "cache"
