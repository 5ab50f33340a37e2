"""CLIP-I / CLIP-T / DINO with tiny random transformers models loaded by the real loading code: known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dsd.eval.embeddings import EmbeddingModelError, EmbeddingModels
from tests.eval_fixtures import degrade, smooth_image, write_tiny_clip, write_tiny_dino


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    return write_tiny_clip(root / "clip"), write_tiny_dino(root / "dino")


@pytest.fixture(scope="module")
def models(folders):
    return EmbeddingModels.load(clip=folders[0], dino=folders[1], batch_size=3)


def _shuffled(image: Image.Image, seed: int = 0) -> Image.Image:
    arr = np.asarray(image).reshape(-1, 3).copy()
    np.random.default_rng(seed).shuffle(arr)
    return Image.fromarray(arr.reshape(np.asarray(image).shape))


def test_identical_image_scores_the_maximum_and_shuffled_or_blank_lower(models):
    ref = smooth_image(1)
    outputs = [ref.copy(), _shuffled(ref), Image.new("RGB", ref.size), smooth_image(2)]
    scores = models.score(ref, outputs, ["a toy"])
    for key in ("clip_i", "dino"):
        values = [s[key] for s in scores]
        assert values[0] == pytest.approx(1.0, abs=1e-5)
        assert all(v < values[0] - 1e-3 for v in values[1:]), (key, values)
    assert set(scores[0]) == {"clip_i", "clip_t", "dino"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_progressively_degraded_set_is_ranked_in_order(models, seed):
    ref = smooth_image(seed)
    amounts = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    outputs = [degrade(ref, a, seed=seed) for a in amounts]
    order = [outputs[i] for i in (3, 0, 5, 1, 4, 2)]  # scrambled so ranking is not the input order
    scores = models.score(ref, order)
    for key in ("clip_i", "dino"):
        by_score = sorted(range(len(order)), key=lambda i: -scores[i][key])
        assert [(3, 0, 5, 1, 4, 2)[i] for i in by_score] == [0, 1, 2, 3, 4, 5], (key, scores)
    assert "clip_t" not in scores[0]  # no prompts given


def test_embeddings_are_normalised_batched_and_batch_size_invariant(models, folders):
    images = [smooth_image(s) for s in range(7)]
    emb = models.image_embeddings(images)
    assert emb["clip"].shape == (7, 16) and emb["dino"].shape == (7, 32)
    for value in emb.values():
        torch.testing.assert_close(value.norm(dim=-1), torch.ones(7))
    one_by_one = EmbeddingModels.load(clip=folders[0], dino=folders[1], batch_size=1).image_embeddings(images)
    for key in emb:
        torch.testing.assert_close(one_by_one[key], emb[key], atol=1e-5, rtol=1e-5)
    text = models.text_embeddings(["a red ball on a table", "a dog", "x"])
    assert text.shape == (3, 16)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(models.text_embeddings(["a dog"])[0], text[1], atol=1e-5, rtol=1e-5)


def test_clip_t_pairs_each_output_with_its_prompt(models):
    ref, outs = smooth_image(0), [smooth_image(5), smooth_image(6)]
    prompts = ["a cat on the moon", "a lamp"]
    per_output = models.score(ref, outs, prompts)
    text = models.text_embeddings(prompts)
    image = models.image_embeddings(outs)["clip"]
    for i in range(2):
        assert per_output[i]["clip_t"] == pytest.approx(float(image[i] @ text[i]), abs=1e-5)
    broadcast = models.score(ref, outs, ["a lamp"])
    assert broadcast[1]["clip_t"] == pytest.approx(per_output[1]["clip_t"], abs=1e-5)
    with pytest.raises(ValueError, match="3 prompts for 2 outputs"):
        models.score(ref, outs, ["a", "b", "c"])
    assert models.score(ref, []) == []


def test_only_loaded_models_give_keys(folders):
    dino_only = EmbeddingModels.load(dino=folders[1])
    assert dino_only.kinds == ("dino",)
    assert set(dino_only.score(smooth_image(0), [smooth_image(1)], ["a toy"])[0]) == {"dino"}
    with pytest.raises(EmbeddingModelError, match="need a CLIP model"):
        dino_only.text_embeddings(["a toy"])
    with pytest.raises(EmbeddingModelError, match="no embedding model"):
        EmbeddingModels.load()


def test_missing_or_wrong_folders_say_what_to_fix(folders, tmp_path):
    with pytest.raises(EmbeddingModelError, match="does not exist"):
        EmbeddingModels.load(clip=tmp_path / "nowhere")
    with pytest.raises(EmbeddingModelError, match="no config.json"):
        EmbeddingModels.load(dino=tmp_path)
    with pytest.raises(EmbeddingModelError, match="holds a dinov2 model, but CLIP needs model_type clip"):
        EmbeddingModels.load(clip=folders[1])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(EmbeddingModelError, match="cannot load the CLIP model"):
        EmbeddingModels.load(clip=broken)


# -- DINOv1 (DreamBench++'s default DINO column) ------------------------------------------------------
@pytest.fixture(scope="module")
def dino_v1_folder(tmp_path_factory):
    from tests.eval_fixtures import write_tiny_dino_v1

    return write_tiny_dino_v1(tmp_path_factory.mktemp("dino_v1") / "dino-vits8")


@pytest.mark.parametrize("size", [(300, 170), (170, 300), (224, 224), (700, 433)])
def test_dino_v1_preprocessing_is_dreambench_plus_torchvision_transform(size):
    from torchvision import transforms

    from dsd.eval.embeddings import dino_v1_pixels

    theirs = transforms.Compose([  # dreambench_plus/metrics/dino_score.py, DinoScore.processor
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(224),
        transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])  # fmt: skip
    image = smooth_image(3, size=max(size)).resize(size)
    torch.testing.assert_close(dino_v1_pixels([image]), theirs(image)[None], atol=1e-6, rtol=0)


def test_dino_v1_is_the_cls_cosine_and_a_separate_column(folders, dino_v1_folder):
    from transformers import ViTModel

    from dsd.eval.embeddings import dino_v1_pixels

    models = EmbeddingModels.load(dino=folders[1], dino_v1=dino_v1_folder)
    assert models.kinds == ("dino", "dino_v1")
    ref = smooth_image(0)
    outputs = [degrade(ref, a, seed=0) for a in (0.0, 0.3, 0.9)]
    scores = models.score(ref, outputs)
    assert scores[0]["dino_v1"] == pytest.approx(1.0, abs=1e-5)
    assert scores[0]["dino_v1"] > scores[1]["dino_v1"] > scores[2]["dino_v1"]
    assert scores[1]["dino_v1"] != pytest.approx(scores[1]["dino"], abs=1e-4)  # two models, two columns
    vit = ViTModel.from_pretrained(dino_v1_folder, add_pooling_layer=False).eval()
    with torch.no_grad():  # DreamBench++'s definition: cosine of the CLS features (x100 in their tables)
        feats = vit(pixel_values=dino_v1_pixels([ref, outputs[2]])).last_hidden_state[:, 0]
    want = torch.nn.functional.cosine_similarity(feats[0:1], feats[1:2]).item()
    assert scores[2]["dino_v1"] == pytest.approx(want, abs=1e-5)


def test_a_dino_v1_folder_given_as_dinov2_says_which_flag(dino_v1_folder, folders):
    with pytest.raises(EmbeddingModelError, match="--dino-v1"):
        EmbeddingModels.load(dino=dino_v1_folder)
    with pytest.raises(EmbeddingModelError, match="DINOv1 needs model_type vit"):
        EmbeddingModels.load(dino_v1=folders[1])
