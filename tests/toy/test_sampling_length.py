"""Sampling matches training (issue 19): the T5 length comes from the adapter's training config unless
given, a mismatch warns; ``dsd eval --base`` samples the plain base (zero embedder) as a system."""

from __future__ import annotations

import json
import logging

from dsd.encoders import sampling_sequence_length, trained_sequence_length
from dsd.eval.run import EvalConfig, run_eval
from dsd.eval.sampling import ModelSpec, SampleSettings
from dsd.tiny import make_tiny, make_tiny_dsd
from dsd.weights.adapter import DSDAdapter, save_adapter
from tests.eval.eval_bench import make_bench


def _adapter(path, length: int | None):
    model = make_tiny_dsd(0)
    embedder = {f"c_embedder.{k}": v.detach().clone() for k, v in model.c_embedder.state_dict().items()}
    meta = {"dsd_train_config": json.dumps({"model": {"max_sequence_length": length}})} if length else {}
    return save_adapter(DSDAdapter(embedder, {}), path, extra_metadata=meta)


def test_length_from_the_adapter_and_a_warning_on_mismatch(tmp_path, caplog):
    trained = _adapter(tmp_path / "a.safetensors", 24)
    plain = _adapter(tmp_path / "b.safetensors", None)
    assert trained_sequence_length(trained) == 24 and trained_sequence_length(plain) is None
    assert sampling_sequence_length(None, plain) == 512 and sampling_sequence_length(None, None) == 512
    with caplog.at_level(logging.WARNING, logger="dsd.encoders"):
        assert sampling_sequence_length(None, trained) == 24
        assert not [r for r in caplog.records if r.name == "dsd.encoders"]
        assert sampling_sequence_length(64, trained) == 64
    assert "trained with max_sequence_length 24" in caplog.text


def test_eval_samples_the_plain_base_and_the_trained_length(tmp_path):
    tiny = make_tiny(tmp_path / "tiny")
    adapter = _adapter(tmp_path / "trained.safetensors", 24)
    models = [ModelSpec("base", tiny.flux_dir, plain_base=True), ModelSpec("trained", tiny.flux_dir, adapter=adapter)]
    cfg = EvalConfig(bench=make_bench(tmp_path / "bench", subjects=1), out=tmp_path / "out", models=models, max_prompts=1,
                     sampling=SampleSettings(seeds=(0,), steps=1, width=64, height=32), progress=False)  # fmt: skip
    summary = run_eval(cfg)
    assert summary.sampled == 2 and sorted(summary.table.system) == ["base", "trained"]
