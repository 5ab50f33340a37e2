"""Training validation scores its samples: CLIP-I/CLIP-T/DINO (tiny random transformers models), the VLM judge
against the local protocol server, TensorBoard scalars, per-step JSON, and best.safetensors by the chosen metric."""

from __future__ import annotations

import json
import re

import pytest
import torch
from training_fixtures import TINY_TOML, make_image, tiny_overrides

from dsd.config import ConfigError
from dsd.eval.embeddings import EmbeddingModels
from tests.eval_fixtures import write_tiny_clip, write_tiny_dino
from tests.support.llm_server import FakeLLMServer
from tests.support.tree import files_containing

SENTINEL_KEY = "sk-validation-sentinel-0123456789abcdef"


def rubric(req):
    props = set(req.json_schema["properties"])
    score = 3 if "reference_features" in props else 4
    return {**{p: "because" for p in props if p != "score"}, "score": score}


@pytest.mark.slow
def test_validation_metrics_tensorboard_and_best_adapter(tiny_flux, wds_dataset, tiny_cache, tmp_path, monkeypatch):
    from PIL import Image
    from safetensors import safe_open
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from training.config import load_config
    from training.loop import train

    refs = []
    for i in range(2):
        refs.append(tmp_path / f"ref{i}.png")
        make_image(50 + i).save(refs[-1])
    clip, dino = write_tiny_clip(tmp_path / "clip"), write_tiny_dino(tmp_path / "dino")
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL_KEY)
    with FakeLLMServer(responder=rubric) as srv:
        cfg = load_config(TINY_TOML, tiny_overrides(tiny_flux, wds_dataset, tmp_path, "training.steps=4",
                          "sampling.every=2", "sampling.steps=2", "saving.save_every=100",
                          f"dataset.cache_dir='{tiny_cache}'", f"sampling.references=['{refs[0]}', '{refs[1]}']",
                          "sampling.prompts=['a toy', 'a toy on a beach']", f"validation.clip='{clip}'",
                          f"validation.dino='{dino}'", "validation.best_metric='dino'",
                          "validation.judge_provider='openai'", "validation.judge_model='judge-model'",
                          f"validation.judge_base_url='{srv.openai_base_url}'"))  # fmt: skip
        train(cfg, resume="none", progress=False)
        assert len(srv.requests) == 2 * 2 * 2  # 2 runs x 2 items x (CP + PF)
    out = tmp_path / "out"
    records = {s: json.loads((out / "validation" / f"step-{s:06d}.json").read_text()) for s in (2, 4)}
    for record in records.values():
        assert [row["name"] for row in record["items"]] == ["ref0", "ref1"]
        for row in record["items"]:
            assert {"clip_i", "clip_t", "dino"} <= set(row) and -1 <= row["dino"] <= 1
            assert (row["judge_cp"], row["judge_pf"], row["judge_cp_x_pf"]) == (0.75, 1.0, 0.75)
        assert record["mean"]["dino"] == pytest.approx(sum(r["dino"] for r in record["items"]) / 2)

    # What was scored is frame two of the saved sample: CLIP-T depends on it and the prompt only.
    models = EmbeddingModels.load(clip=clip)
    for row in records[4]["items"]:
        with Image.open(out / "samples" / f"step-000004-{row['name']}.png") as im:
            frame_two = im.convert("RGB").crop((im.width // 2, 0, im.width, im.height))
        assert models.score(frame_two, [frame_two], [row["prompt"]])[0]["clip_t"] == pytest.approx(row["clip_t"], abs=1e-5)

    best_step = max((2, 4), key=lambda s: records[s]["mean"]["dino"])
    best = json.loads((out / "best.json").read_text())
    assert best == {"metric": "dino", "value": records[best_step]["mean"]["dino"], "step": best_step,
                    "adapter": "best.safetensors"}  # fmt: skip
    with safe_open(str(out / "best.safetensors"), "pt") as f:
        assert f.metadata()["dsd_train_steps"] == str(best_step)
        assert set(f.keys()) == set(safe_open(str(out / cfg.saving.adapter_name), "pt").keys())

    (events,) = (out / "logs").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    for key in ("clip_i", "clip_t", "dino", "judge_cp", "judge_pf", "judge_cp_x_pf"):
        assert [e.step for e in acc.Scalars(f"val/{key}")] == [2, 4], key
    assert files_containing(out, SENTINEL_KEY.encode()) == []  # the key is read from the environment and written nowhere


@pytest.mark.slow
def test_an_ema_run_validates_and_ships_its_ema(tiny_flux, wds_dataset, tiny_cache, tmp_path):
    """With training.ema_decay, validation samples the EMA weights and best.safetensors, the run's adapter and a
    plain ``export`` hold them; the swap leaves training alone (the same losses and live weights as without
    validation)."""
    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file

    from training.config import load_config
    from training.export import export_checkpoint
    from training.loop import train

    ref = tmp_path / "ref.png"
    make_image(7).save(ref)
    clip = write_tiny_clip(tmp_path / "clip")
    common = ["training.steps=3", "optimizer.lr=5e-2", "saving.save_every=1", "sampling.steps=2",
              f"dataset.cache_dir='{tiny_cache}'"]  # fmt: skip
    validation = ["sampling.every=1", f"sampling.references=['{ref}']", "sampling.prompts=['a toy']",
                  f"validation.clip='{clip}'", "validation.best_metric='clip_i'"]  # fmt: skip
    runs = {"ema": [*common, "training.ema_decay=0.9", *validation], "live": [*common, *validation],
            "unvalidated": [*common, "training.ema_decay=0.9"]}  # fmt: skip
    cfgs = {r: load_config(TINY_TOML, tiny_overrides(tiny_flux, wds_dataset, tmp_path / r, *sets)) for r, sets in runs.items()}
    done = {r: train(cfg, resume="none", progress=False) for r, cfg in cfgs.items()}
    out = {r: tmp_path / r / "out" for r in runs}

    def same(a, b):
        return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

    assert done["ema"].losses == done["unvalidated"].losses == done["live"].losses
    for file in ("trainable.safetensors", "ema.safetensors"):
        a, b = (load_file(str(out[r] / "checkpoints" / "step-000003" / file)) for r in ("ema", "unvalidated"))
        assert same(a, b), file

    def exported(step, use_ema):
        ckpt = out["ema"] / "checkpoints" / f"step-{step:06d}"
        return load_file(export_checkpoint(cfgs["ema"], ckpt, tmp_path / f"x{step}{use_ema}.safetensors", use_ema=use_ema)["adapter"])

    ema_3 = exported(3, True)
    assert same(load_file(str(out["ema"] / cfgs["ema"].saving.adapter_name)), ema_3)
    assert same(exported(3, None), ema_3) and not same(exported(3, False), ema_3)
    best = json.loads((out["ema"] / "best.json").read_text())
    assert same(load_file(str(out["ema"] / "best.safetensors")), exported(best["step"], True))

    def sample(run, step):
        with Image.open(out[run] / "samples" / f"step-{step:06d}-ref.png") as im:
            return np.asarray(im.convert("RGB"))

    # diffusers' EMA takes the first update whole (decay 0), so at step 1 the EMA is the live weights and both runs
    # sample alike; by step 3 it lags, and the EMA run's sample is the EMA's
    assert np.array_equal(sample("ema", 1), sample("live", 1))
    assert not np.array_equal(sample("ema", 3), sample("live", 3))


def test_best_tracker_survives_a_restart(tmp_path):
    from training.validation import BestTracker

    first = BestTracker(tmp_path, "clip_i")
    first.offer({"clip_i": 0.5}, 2)
    assert first.pending
    first.save()
    again = BestTracker(tmp_path, "clip_i")
    again.offer({"clip_i": 0.4}, 4)
    assert not again.pending and again.step == 2
    again.offer({"clip_i": 0.6, "dino": 0.1}, 6)
    assert again.pending and again.step == 6
    other = BestTracker(tmp_path, "dino")  # a different metric starts over
    other.offer({"dino": -0.9}, 8)
    assert other.pending


def test_validation_config_is_typed_and_checked(tmp_path):
    from training.config import load_config

    bad = tmp_path / "bad.toml"
    bad.write_text('[validation]\nclip_folder = "x"\n')
    with pytest.raises(ConfigError, match=re.escape("validation: unknown key(s) clip_folder")):
        load_config(bad)
    with pytest.raises(ConfigError, match="best_metric = 'clip_i' needs validation.clip"):
        load_config(TINY_TOML, ["validation.best_metric='clip_i'"])
    with pytest.raises(ConfigError, match="not one of"):
        load_config(TINY_TOML, ["validation.best_metric='fid'"])
    with pytest.raises(ConfigError, match="judge_model is empty"):
        load_config(TINY_TOML, ["validation.judge_provider='openai'"])
    cfg = load_config(TINY_TOML, ["validation.clip='models/clip'"])
    assert cfg.validation.clip.endswith("models/clip") and cfg.validation.clip.startswith("/")
