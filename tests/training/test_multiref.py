"""Multi-reference training (issue 20): tuples from datagen shards, the k mix, buckets, per-frame dropout, resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from training_fixtures import TINY_TOML, tiny_overrides, write_wds_tuples

from training.config import ConfigError, TrainingConfig, load_config
from training.data import (
    DatasetError,
    PairReadError,
    Variants,
    canvas_bucket,
    discover,
    epoch_batches,
    expand_references,
    pair_canvases,
    read_pair,
)
from training.objective import condition_mask, draw

MIX = "training.references={1 = 0.5, 2 = 0.25, 3 = 0.25}"
QUIET = ["logging.tensorboard=false", "training.caption_dropout=0.0", "training.reference_dropout=0.0"]


@pytest.fixture(scope="module")
def tuples(tmp_path_factory):
    return write_wds_tuples(tmp_path_factory.mktemp("tuples") / "dataset")


def test_mix_config():
    assert TrainingConfig().reference_mix == {1: 1.0}  # the default: one reference, as DSD
    assert TrainingConfig(references={"3": 1, "1": 2.0, "2": 1.0}).reference_mix == {1: 0.5, 2: 0.25, 3: 0.25}
    assert TrainingConfig(references={"1": 1.0, "2": 0.0}).reference_mix == {1: 1.0}
    for bad in ({"4": 1.0}, {"0": 1.0}, {"x": 1.0}, {"1": -1.0}, {"1": float("nan")}, {"1": 0.0}, {"1": "a"}):
        with pytest.raises(ConfigError, match="training.references"):
            TrainingConfig(references=bad)
    cfg = load_config(TINY_TOML, [MIX])
    assert cfg.training.reference_mix == {1: 0.5, 2: 0.25, 3: 0.25}
    with pytest.raises(ConfigError, match="multiple of 16"):
        load_config(TINY_TOML, [MIX, "dataset.frame_buckets=[[32, 40]]"])
    load_config(TINY_TOML, ["dataset.frame_buckets=[[32, 40]]"])  # one reference keeps today's rule


def test_tuples_are_read_with_their_references(tuples):
    refs = discover([str(tuples)])
    assert [r.available for r in refs] == [3, 3, 2, 1]
    entries = expand_references(refs, {1: 0.5, 2: 0.25, 3: 0.25})
    assert [(e.key, e.k, e.group) for e in entries] == [
        ("tuple0000", 1, "tuple0000"), ("tuple0000@k2", 2, "tuple0000"), ("tuple0000@k3", 3, "tuple0000"),
        ("tuple0001", 1, "tuple0001"), ("tuple0001@k2", 2, "tuple0001"), ("tuple0001@k3", 3, "tuple0001"),
        ("tuple0002", 1, "tuple0002"), ("tuple0002@k2", 2, "tuple0002"), ("tuple0003", 1, ""),
    ]  # fmt: skip
    pair = read_pair(entries[2])
    assert len(pair.references) == 3 and pair.caption == "a toy subject number 0"
    assert len(read_pair(entries[0]).references) == 1  # k = 1 reads ref.png only
    assert expand_references(refs, {1: 1.0}) == refs  # the default mix: every sample once, at k = 1
    assert [e.key for e in expand_references(refs, {3: 1.0})] == ["tuple0000@k3", "tuple0001@k3"]
    with pytest.raises(DatasetError, match="enough references"):
        expand_references(refs[3:], {2: 1.0})


def test_bad_tuples_are_named(tmp_path):
    import tarfile

    from training_fixtures import _add, make_image, png_bytes

    with tarfile.open(tmp_path / "gap.tar", "w") as tf:
        for name in ("a.ref.png", "a.ref_3.png", "a.target.png"):
            _add(tf, name, png_bytes(make_image(0)))
        _add(tf, "a.json", b'{"caption": "x", "k": 3}')
    with pytest.raises(DatasetError, match="ref_2, ref_3"):
        discover([str(tmp_path / "gap.tar")])
    with tarfile.open(tmp_path / "k.tar", "w") as tf:
        for name in ("b.ref.png", "b.ref_2.png", "b.target.png"):
            _add(tf, name, png_bytes(make_image(0)))
        _add(tf, "b.json", b'{"caption": "x", "k": 3}')
    with pytest.raises(PairReadError, match="k = 3 but the shard holds 2"):
        read_pair(discover([str(tmp_path / "k.tar")])[0])


def test_canvases_one_reference_as_today_and_k_frames(tuples):
    from dsd.canvas import fit_reference, to_rgb01

    entry = expand_references(discover([str(tuples)]), {1: 1.0, 3: 1.0})
    pair = read_pair(entry[1])  # tuple0000@k3
    cond1, target1 = pair_canvases(pair, (32, 32))
    ref = fit_reference(to_rgb01(pair.reference), 32, 32) * 2 - 1  # pair_canvases before issue 20, transcribed
    today = torch.full((1, 3, 32, 64), -1.0)
    today[..., :32] = ref
    assert torch.equal(cond1, today)
    assert torch.equal(target1, torch.cat([ref, fit_reference(to_rgb01(pair.target), 32, 32) * 2 - 1], -1))
    cond, target = pair_canvases(pair, canvas_bucket((32, 32), 3))
    assert cond.shape == target.shape == (1, 3, 32, 128)
    for j, image in enumerate(pair.references):
        frame = fit_reference(to_rgb01(image), 32, 32) * 2 - 1
        assert torch.equal(cond[..., 32 * j : 32 * (j + 1)], frame) and torch.equal(target[..., 32 * j : 32 * (j + 1)], frame)
    assert torch.equal(cond[..., 96:], torch.full_like(cond[..., 96:], -1.0))
    assert canvas_bucket((32, 48), 1) == (32, 48)


def test_each_epoch_trains_a_tuple_at_one_k():
    # 300 triples (k = 1, 2, 3 entries each) + 100 pairs; buckets by canvas shape
    ks = [k for _ in range(300) for k in (1, 2, 3)] + [1] * 100
    groups = [f"t{i // 3}" for i in range(900)] + [""] * 100
    buckets = [canvas_bucket((32, 32), k) for k in ks]
    mix = {1: 0.5, 2: 0.25, 3: 0.25}
    variants = Variants.of(groups, ks, mix)
    assert Variants.of([""] * 4, [1] * 4, {1: 1.0}) is None
    plan = epoch_batches(buckets, 1, seed=0, epoch=0, variants=variants)
    used = [i for batch in plan for i in batch]
    assert len(used) == 400 and len({groups[i] for i in used if groups[i]}) == 300  # one entry per tuple
    counts = np.bincount([ks[i] for i in used if groups[i]], minlength=4)[1:] / 300
    np.testing.assert_allclose(counts, [0.5, 0.25, 0.25], atol=0.08)
    other = [i for b in epoch_batches(buckets, 1, seed=0, epoch=1, variants=variants) for i in b]
    assert sorted(other) != sorted(used)  # another epoch, other draws
    for batch in epoch_batches(buckets, 4, seed=0, epoch=0, variants=variants):
        assert len({buckets[i] for i in batch}) == 1  # one canvas shape per batch


def test_frame_dropout_mask_matches_the_canvas():
    from dsd.tokens import pack

    k, h, fw = 3, 4, 6  # latent: 4 rows, frames 6 latent columns (3 tokens) wide
    drop = torch.tensor([[True, False, True], [False, False, False]])
    pixels = torch.zeros(2, 1, h, (k + 1) * fw)
    for b in range(2):
        for j in range(k):
            if drop[b, j]:
                pixels[b, :, :, j * fw : (j + 1) * fw] = 1
    expected = pack(pixels.expand(-1, 16, -1, -1).contiguous()).amax(-1) > 0
    assert torch.equal(condition_mask(drop, (h, (k + 1) * fw)), expected)


def test_draws_of_one_reference_are_unchanged():
    cfg = TrainingConfig(reference_dropout=0.3, reference_frame_dropout=0.5)
    a, b = draw(cfg, (2, 8, 64), torch.Generator().manual_seed(3)), draw(cfg, (2, 8, 64), torch.Generator().manual_seed(3), 3)
    assert a.drop_frames is None and b.drop_frames is not None and b.drop_frames.shape == (2, 3)
    assert torch.equal(a.noise, b.noise) and torch.equal(a.t, b.t) and torch.equal(a.drop_reference, b.drop_reference)


# -- cache and training on the tiny FLUX ------------------------------------------------------------
@pytest.mark.slow
def test_cache_of_tuples_is_what_on_the_fly_encoding_gives(tiny_flux, tuples, tmp_path):
    from training.cache import CachedSource, Encoders, EncodingSource, run_cache

    cfg = load_config(TINY_TOML, tiny_overrides(tiny_flux, tuples, tmp_path, MIX))
    summary = run_cache(cfg, progress=False)
    assert summary.samples_written == 9 and summary.references == {1: 4, 2: 3, 3: 2}
    cached = CachedSource(cfg.dataset.cache_dir)
    assert cached.reference_mix == {1: 0.5, 2: 0.25, 3: 0.25} and cached.variants is not None
    assert sorted(set(cached.buckets)) == [(32, 32), (32, 32, 2), (32, 32, 3)]
    live = EncodingSource(cfg, Encoders(str(tiny_flux), max_sequence_length=16))
    assert live.keys == cached.keys and live.buckets == cached.buckets
    i = cached.keys.index("tuple0000@k3")
    a, b = cached.get(i), live.get(i)
    assert a["references"] == b["references"] == 3 and a["cond"].shape == (16, 4, 16)
    torch.testing.assert_close(a["cond"], b["cond"], rtol=0, atol=1e-5)
    assert run_cache(cfg, progress=False).shards_skipped_done == summary.shards_total  # resumable, nothing redone
    info = json.loads((tmp_path / "cache" / "cache_info.json").read_text())
    assert info["settings"]["references"] == {"1": 0.5, "2": 0.25, "3": 0.25}


@pytest.mark.slow
def test_default_mix_on_tuples_caches_what_pairs_of_their_first_reference_cache(tiny_flux, tmp_path):
    from safetensors.torch import load_file

    from training.cache import run_cache

    tuples, pairs = write_wds_tuples(tmp_path / "t"), write_wds_tuples(tmp_path / "p", first_only=True)
    files = []
    for name, data in (("a", tuples), ("b", pairs)):
        cfg = load_config(TINY_TOML, tiny_overrides(tiny_flux, data, tmp_path / name))
        run_cache(cfg, progress=False)
        files.append(sorted((tmp_path / name / "cache" / "shards").glob("*.safetensors")))
    assert [f.name for f in files[0]] == [f.name for f in files[1]]
    for fa, fb in zip(files[0], files[1], strict=True):
        ta, tb = load_file(str(fa)), load_file(str(fb))
        assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


def _trainable(out_dir):
    from safetensors.torch import load_file

    from training.checkpoint import latest_checkpoint

    return load_file(str(latest_checkpoint(out_dir) / "trainable.safetensors"))


@pytest.mark.slow
def test_k_mix_trains_resumes_exactly_and_records_k(tiny_flux, tuples, tmp_path):
    """A k = 1..3 mix with both dropouts: steps 1-4 in one go == 1-2, stop, resume, 3-4; the adapter says [1, 2, 3]."""
    from dsd.weights.adapter import load_adapter, trained_references
    from training.cache import run_cache
    from training.loop import train

    extra = [*QUIET, MIX, "training.steps=4", "saving.save_every=2", "saving.keep_last=0", "training.batch_size=1",
             "training.effective_batch_size=2", "training.reference_dropout=0.3", "training.reference_frame_dropout=0.5",
             f"dataset.cache_dir='{tmp_path / 'cache'}'"]  # fmt: skip
    a = load_config(TINY_TOML, tiny_overrides(tiny_flux, tuples, tmp_path / "a", *extra))
    run_cache(a, progress=False)
    full = train(a, resume="none", progress=False)
    b = load_config(TINY_TOML, tiny_overrides(tiny_flux, tuples, tmp_path / "b", *extra))
    shutil.copytree(tmp_path / "a/out/checkpoints/step-000002", tmp_path / "b/out/checkpoints/step-000002")
    resumed = train(b, resume="auto", progress=False)
    assert resumed.start_step == 2 and resumed.steps_done == 2
    np.testing.assert_allclose(resumed.losses, full.losses[2:], rtol=0, atol=1e-6)
    wa, wb = _trainable(tmp_path / "a/out"), _trainable(tmp_path / "b/out")
    assert set(wa) == set(wb) and all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-6) for k in wa)
    assert trained_references(load_adapter(full.adapter)) == [1, 2, 3]
    other = load_config(TINY_TOML, tiny_overrides(tiny_flux, tuples, tmp_path / "c", *QUIET, f"dataset.cache_dir='{tmp_path / 'cache'}'"))
    with pytest.raises(ConfigError, match="made for training.references"):
        train(other, resume="none", progress=False)


def test_estimate_covers_k3():
    from pathlib import Path

    from training.estimate import canvas_image_tokens, estimate, render_markdown

    paper = Path(TINY_TOML).parent / "paper_8xh100.toml"
    one = estimate(load_config(paper))
    mixed = estimate(load_config(paper, [MIX]))
    three = estimate(load_config(paper, ["training.references={3 = 1.0}"]))
    assert (one.image_tokens, three.image_tokens) == (2048, 4096) == (canvas_image_tokens(load_config(paper)), 4096)
    assert one.flops_by_k is not None and one.flops_by_k[1] == one.flops_per_sample  # the default: today's figures
    assert mixed.total_ddp_gib == three.total_ddp_gib > one.total_ddp_gib  # memory at the largest k
    expected = 0.5 * one.flops_by_k[1] + 0.25 * one.flops_by_k[2] + 0.25 * one.flops_by_k[3]
    assert mixed.flops_per_sample == pytest.approx(expected) and three.flops_per_sample == one.flops_by_k[3]
    assert 1.8 < one.flops_by_k[3] / one.flops_by_k[1] < 2.1  # 4096 + 512 tokens against 2048 + 512
    md = render_markdown(mixed, load_config(paper, [MIX]), "paper_8xh100.toml")
    assert "| 3 | 512x2048 | 4096 |" in md and "memory above at k = 3" in md
