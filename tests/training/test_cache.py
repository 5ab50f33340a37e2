"""The latent/text cache: content, resume after an interruption, bad images, stale or foreign caches."""

from __future__ import annotations

import json

import pytest
import torch
from training_fixtures import TINY_TOML, tiny_overrides, write_authors_parquet, write_wds_dataset

from training.cache import SHARD_LOG, CachedSource, CacheError, Encoders, run_cache
from training.config import load_config
from training.data import PairReadError, discover, pair_canvases, read_pair

pytestmark = pytest.mark.slow  # tiny models, but each test loads encoders / trains a few steps


def test_cache_content_matches_encoders(tiny_flux, wds_dataset, tiny_cache):
    src = CachedSource(tiny_cache)
    assert len(src) == 4 and src.keys[0] == "pair0000"
    item = src.get(0)
    assert item["cond"].shape == (16, 4, 8) and item["target"].shape == (16, 4, 8)
    assert item["prompt_embeds"].shape == (16, 32) and item["pooled"].shape == (32,)
    enc = Encoders(str(tiny_flux), max_sequence_length=16)
    pair = read_pair(discover([str(wds_dataset)])[0])
    cond, target = pair_canvases(pair, (32, 32))
    assert torch.all(cond[..., 32:] == -1) and torch.equal(cond[..., :32], target[..., :32])
    lat = enc.encode_canvas(torch.cat([cond, target]))
    torch.testing.assert_close(item["cond"], lat[0])
    torch.testing.assert_close(item["target"], lat[1])
    emb, pooled = enc.encode_prompt([pair.caption])
    torch.testing.assert_close(item["prompt_embeds"], emb[0])


def test_cache_resume_and_buckets(tiny_flux, tmp_path):
    data = write_wds_dataset(tmp_path / "ds", n=4, wide=(2,))
    pq = write_authors_parquet(tmp_path / "authors.parquet", n=2)
    cfg = load_config(TINY_TOML, tiny_overrides(tiny_flux, [data, pq], tmp_path, "dataset.cache_shard_size=2"))
    first = run_cache(cfg, progress=False)
    assert (first.shards_total, first.shards_written, first.samples_written) == (3, 3, 6)
    # Simulate kill -9 after two shards: drop the last log line and its shard.
    log = tmp_path / "cache" / SHARD_LOG
    lines = log.read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])
    log.write_text("".join(lines[:-1]) + lines[-1][:10])  # plus a torn partial line
    (tmp_path / "cache" / "shards" / last["file"]).unlink()
    with pytest.raises(CacheError, match="incomplete"):
        CachedSource(tmp_path / "cache")
    again = run_cache(cfg, progress=False)
    assert (again.shards_skipped_done, again.shards_written) == (2, 1)
    src = CachedSource(tmp_path / "cache")
    assert len(src) == 6
    assert src.buckets[src.keys.index("pair0002")] == (32, 48)
    assert src.get(src.keys.index("pair0002"))["target"].shape == (16, 4, 12)


def test_bad_image_error_and_skip(tiny_flux, tmp_path):
    data = write_wds_dataset(tmp_path / "ds", n=3, bad=(1,))
    cfg = load_config(TINY_TOML, tiny_overrides(tiny_flux, data, tmp_path))
    with pytest.raises(PairReadError, match=r"shard-000000.tar \[pair0001\].*on_bad_image"):
        run_cache(cfg, progress=False)
    cfg = load_config(TINY_TOML, tiny_overrides(tiny_flux, data, tmp_path / "skip", "dataset.on_bad_image='skip'"))
    s = run_cache(cfg, progress=False)
    assert s.bad_images == 1 and s.samples_written == 2
    assert CachedSource(tmp_path / "skip" / "cache").keys == ["pair0000", "pair0002"]


def test_cache_with_other_settings_is_refused(tiny_flux, wds_dataset, tiny_cache, tmp_path):
    work = tiny_cache.parent
    cfg = load_config(TINY_TOML, tiny_overrides(tiny_flux, wds_dataset, work, "dataset.fit='pad'"))
    with pytest.raises(CacheError, match="other settings"):
        run_cache(cfg, progress=False)
    with pytest.raises(CacheError, match="no finished cache"):
        CachedSource(tmp_path / "nothing")


def test_cache_needs_flux_folder(wds_dataset, tmp_path):
    cfg = load_config(TINY_TOML, tiny_overrides(tmp_path / "noflux", wds_dataset, tmp_path))
    with pytest.raises(CacheError, match="not a diffusers FLUX pipeline folder"):
        run_cache(cfg, progress=False)
