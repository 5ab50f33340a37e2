"""Config validation, data readers (webdataset shards, authors' parquet), buckets, batch plans."""

from __future__ import annotations

import tarfile

import pytest
from training_fixtures import TINY_TOML, write_authors_parquet, write_wds_dataset

from dsd.config import ConfigError
from training.config import TrainConfig, load_config
from training.data import (
    DatasetError,
    PairReadError,
    discover,
    epoch_batches,
    pick_bucket,
    read_pair,
    target_size,
)


def test_tiny_config_loads_and_resolves_paths():
    cfg = load_config(TINY_TOML)
    assert isinstance(cfg, TrainConfig)
    assert cfg.network.rank == 4
    assert cfg.model.flux.endswith("output/tiny/flux") and cfg.model.flux.startswith("/")


def test_unknown_key_is_rejected(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[network]\nrank = 4\nrnak = 8\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) rnak.*known keys"):
        load_config(bad)


def test_unknown_section_and_wrong_type(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[trainig]\nsteps = 4\n")
    with pytest.raises(ConfigError, match="trainig"):
        load_config(bad)
    bad.write_text("[training]\nsteps = 'many'\n")
    with pytest.raises(ConfigError, match=r"training\.steps: expected an integer"):
        load_config(bad)


def test_overrides_are_typed():
    cfg = load_config(TINY_TOML, ["network.rank=8", "optimizer.lr=0.5", "training.guidance=3.5"])
    assert (cfg.network.rank, cfg.optimizer.lr, cfg.training.guidance) == (8, 0.5, 3.5)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(TINY_TOML, ["network.rnak=8"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(TINY_TOML, ["network.rank=big"])
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        load_config(TINY_TOML, ["training.caption_dropout=2.0"])


def test_effective_batch_must_divide():
    cfg = load_config(TINY_TOML, ["training.batch_size=3", "training.effective_batch_size=8"])
    with pytest.raises(ConfigError, match="multiple"):
        cfg.grad_accumulation(1)
    cfg = load_config(TINY_TOML, ["training.batch_size=4", "training.effective_batch_size=160"])
    assert cfg.grad_accumulation(8) == 5


def test_adamw8bit_without_bitsandbytes_is_a_clear_error():
    import importlib.util

    import torch

    from training.loop import OptionalDependencyError, make_optimizer

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    cfg = load_config(TINY_TOML, ["optimizer.name='adamw8bit'"])
    with pytest.raises(OptionalDependencyError, match="pip install bitsandbytes.*optimizer.name"):
        make_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(2))])


def test_webdataset_reader(tmp_path):
    data = write_wds_dataset(tmp_path / "ds", n=5, per_shard=2, wide=(3,))
    refs = discover([str(data)])
    assert [r.key for r in refs] == [f"pair{i:04d}" for i in range(5)]
    assert len({r.source for r in refs}) == 3
    pair = read_pair(refs[3])
    assert pair.caption == "a toy object number 3"
    assert pair.reference.size == pair.target.size == (60, 40)
    assert target_size(refs[3]) == (60, 40)


@pytest.mark.parametrize("struct", [True, False])
def test_authors_parquet_reader(tmp_path, struct):
    path = write_authors_parquet(tmp_path / "train.parquet", n=5, struct=struct)
    refs = discover([str(path)])
    assert len(refs) == 5
    pair = read_pair(refs[4])
    assert pair.caption == "an authors' pair 4"
    from training_fixtures import make_image

    assert list(pair.target.getdata())[:5] == list(make_image(3004).getdata())[:5]  # image column is the target
    assert list(pair.reference.getdata())[:5] == list(make_image(4004).getdata())[:5]


def test_mixed_sources_and_duplicate_keys(tmp_path):
    wds = write_wds_dataset(tmp_path / "a", n=2)
    pq = write_authors_parquet(tmp_path / "b" / "x.parquet", n=2)
    assert len(discover([str(wds), str(pq.parent)])) == 4
    wds2 = write_wds_dataset(tmp_path / "c", n=2)
    with pytest.raises(DatasetError, match="duplicate sample key 'pair0000'"):
        discover([str(wds), str(wds2)])


def test_missing_data_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        discover([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no shard-\\*.tar or \\*.parquet"):
        discover([str(tmp_path / "empty")])
    with pytest.raises(DatasetError, match="dataset.paths is empty"):
        discover([])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [b"x"], "caption": ["c"]}), tmp_path / "wrong.parquet")
    with pytest.raises(DatasetError, match="lacks column.*conditioning"):
        discover([str(tmp_path / "wrong.parquet")])


def test_incomplete_tar_sample(tmp_path):
    import io

    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tf:
        info = tarfile.TarInfo("k1.ref.png")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(DatasetError, match=r"shard-000000.tar: sample 'k1' has \[ref.png\]"):
        discover([str(tmp_path)])


def test_unreadable_image_names_shard_and_key(tmp_path):
    data = write_wds_dataset(tmp_path / "ds", n=3, bad=(1,))
    refs = discover([str(data)])
    with pytest.raises(PairReadError, match=r"shard-000000.tar \[pair0001\] target: unreadable image"):
        read_pair(refs[1])


def test_buckets():
    buckets = [[32, 32], [32, 48], [48, 32]]
    assert pick_bucket(40, 40, buckets) == (32, 32)
    assert pick_bucket(60, 40, buckets) == (32, 48)
    assert pick_bucket(40, 64, buckets) == (48, 32)


def test_epoch_batches_deterministic_and_single_bucket():
    buckets = [(32, 32)] * 5 + [(32, 48)] * 4
    a = epoch_batches(buckets, 2, seed=0, epoch=0)
    assert a == epoch_batches(buckets, 2, seed=0, epoch=0)
    assert a != epoch_batches(buckets, 2, seed=0, epoch=1)
    assert len(a) == 2 + 2  # ragged batch of the 5-pair bucket dropped
    for batch in a:
        assert len({buckets[i] for i in batch}) == 1
    with pytest.raises(DatasetError, match="no full batch"):
        epoch_batches([(32, 32)], 2, 0, 0)
