"""``--protocol dreambench++`` on files in DreamBench++'s formats (a checkout's prompt files, their benchmark
folders, their JSON outputs), tiny models and the local protocol server through the real openai client."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from dsd.eval.protocol import JUDGE_MODEL, ProtocolError, check_models, load_prompts
from dsd.eval.run import EvalConfig, JudgeSettings, run_eval
from dsd.eval.stages import ImageSource
from tests.eval_fixtures import degrade, smooth_image, write_tiny_clip, write_tiny_dino_v1
from tests.support.llm_server import FakeLLMServer

PROMPTS = {  # their file names; the texts are ours, in their shape (task, criteria, range / acknowledgement)
    "user_prompt_subject_full": "### Task Definition\nCompare the SUBJECT of two images.\n### Scoring Range\n0 to 4",
    "gpt_prompt_subject_full": "Yes, I understand the SUBJECT task.",
    "user_prompt_style_full": "### Task Definition\nCompare the STYLE of two images.\n### Scoring Range\n0 to 4",
    "gpt_prompt_style_full": "Yes, I understand the STYLE task.",
    "user_prompt_text_full": "### Task Definition\nCompare image and TEXT.\n### Scoring Range\n0 to 4",
    "gpt_prompt_text_full": "Yes, I understand the TEXT task.",
}
CAPTIONS = ["a photo of it on a beach", "it in a kitchen", "it in the snow", "it on a sofa", "a watercolour of it",
            "it in pixel art", "an oil painting of it", "it on the moon", "it made of glass"]  # fmt: skip


def checkout(root):
    folder = root / "dreambench_plus" / "dreambench_plus" / "prompts"
    folder.mkdir(parents=True)
    for name, text in PROMPTS.items():
        (folder / f"{name}.txt").write_text(text + "\n")
    return root / "dreambench_plus"


def dreambench_plus(root):
    """Their data layout: images/<category>/<n>.jpg, captions/<category>/<n>.txt (subject, then 9 prompts)."""
    for k, (category, name) in enumerate((("animal", "Corgi Dog"), ("style", "Ukiyo-e Print"))):
        (root / "images" / category).mkdir(parents=True)
        (root / "captions" / category).mkdir(parents=True)
        smooth_image(seed=20 + k, size=96).save(root / "images" / category / "0.jpg", quality=95)
        (root / "captions" / category / "0.txt").write_text("\n".join([name, *CAPTIONS]) + "\n")
    return root


def outputs(root, bench):
    for ref in sorted(bench.glob("images/*/0.jpg")):
        for k in range(9):
            folder = root / f"{ref.parent.name}_0"
            folder.mkdir(parents=True, exist_ok=True)
            degrade(Image.open(ref).convert("RGB"), 0.05 + 0.05 * k, seed=k).save(folder / f"p{k}.png")
    return root


def their_judge(req):
    """Answers like GPT-4o under their prompts: free text with one 'Score: N' (CP 3, PF by prompt)."""
    messages = req.body["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    first = messages[0]["content"]
    if "TEXT" in first:
        score = 4 if "beach" in req.prompt else 1
    else:
        score = 2 if "STYLE" in first else 3
    return f"The analysis goes here.\nScore: {score}"


@pytest.fixture()
def world(tmp_path):
    bench = dreambench_plus(tmp_path / "data")
    return {"bench": bench, "repo": checkout(tmp_path / "checkout"), "sys": outputs(tmp_path / "sys", bench),
            "clip": write_tiny_clip(tmp_path / "clip"), "dino_v1": write_tiny_dino_v1(tmp_path / "dino_v1")}


def cfg(world, tmp_path, url, **kw) -> EvalConfig:
    return EvalConfig(bench=world["bench"], out=tmp_path / "out", sources=[ImageSource("My-Method", world["sys"])],
                      clip=world["clip"], dino_v1=world["dino_v1"], protocol="dreambench++", protocol_dir=world["repo"],
                      judge=JudgeSettings("openai", "gpt-4o-mini", url, concurrency=4), progress=False, **kw)  # fmt: skip


def test_their_requests_scale_outputs_and_a_non_protocol_label(world, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeLLMServer(responder=their_judge) as srv:
        summary = run_eval(cfg(world, tmp_path, srv.openai_base_url))
        requests = list(srv.requests)
    assert len(requests) == 2 * 9 * 2 and summary.judged == 18
    for req in requests:
        assert req.temperature == 1.0 and req.json_schema is None
        for image in req.images:  # both pictures stretched to 512x512, JPEG
            with Image.open(io.BytesIO(image)) as im:
                assert im.format == "JPEG" and im.size == (512, 512)
        last = req.body["messages"][-1]["content"]
        assert [p["type"] for p in last] == (["image_url"] * 2 if len(req.images) == 2 else ["text", "image_url"])
    style_cp = [r for r in requests if "STYLE" in r.body["messages"][0]["content"]]
    assert len(style_cp) == 9  # the style subject's CP requests use their style prompt pair
    table = summary.table.set_index("id")
    assert table.loc["My-Method/animal_0/p0", "cp"] == 0.75 and table.loc["My-Method/style_0/p0", "cp"] == 0.5
    assert table.loc["My-Method/animal_0/p0", "pf"] == 1.0 and table.loc["My-Method/animal_0/p1", "pf"] == 0.25
    # every picture was scored from its JPEG q75 re-save
    saved = tmp_path / "out" / "protocol_jpeg" / "My-Method" / "animal_0" / "p4.jpg"
    buf = io.BytesIO()
    Image.open(world["sys"] / "animal_0" / "p4.png").convert("RGB").save(buf, format="JPEG", quality=75)
    assert saved.read_bytes() == buf.getvalue() and table.loc["My-Method/animal_0/p4", "path"] == str(saved)
    # their JSON outputs: per item and merged, named as their merge_data / benchmarking.py read them
    outs = tmp_path / "out" / "dreambench_plus_outputs"
    item = json.loads((outs / "concept_preservation_full" / "my_method" / "my_method-live_subject_animal_0_corgi_dog-0.json").read_text())
    assert item == {"method": "my_method", "collection_id": "live_subject_animal_0_corgi_dog", "prompt_index": 0,
                    "score": 3, "content": "Score: 3"}  # fmt: skip
    merged = json.loads((outs / "prompt_following_full" / "my_method.json").read_text())
    assert len(merged) == 18 and merged["style_0_ukiyo-e_print-0"] == 4
    # their table layout, labelled: tiny models and another judge are not the protocol's
    assert "NON-PROTOCOL" in summary.protocol_table and "gpt-4o-mini" in summary.protocol_table
    header = summary.protocol_table.splitlines()[1]
    assert re.search(r"Animal \| Human \| Object \| Style \| CP \| Photorealistic \| Style Transfer \| Imaginative", header)
    row = summary.protocol_table.splitlines()[3]
    assert row.startswith("| My-Method |") and "| 0.750 |" in row and "| 0.500 |" in row  # animal / style CP
    assert float(row.split("|")[4]) > 50  # CLIP-I as 100 x cosine
    html = (tmp_path / "out" / "report_dreambench_plus" / "index.html").read_text()
    assert "NON-PROTOCOL" in html


def test_strict_refuses_and_their_models_pass(world, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with pytest.raises(ProtocolError, match="not the dreambench\\+\\+ protocol.*clip"):
        run_eval(cfg(world, tmp_path, "http://127.0.0.1:9/v1", protocol_strict=True))
    configs = {"clip": {"model_type": "clip", "projection_dim": 512,
                        "vision_config": {"patch_size": 32, "hidden_size": 768, "num_hidden_layers": 12}},
               "dino": {"model_type": "dinov2", "hidden_size": 384, "patch_size": 14, "num_hidden_layers": 12},
               "dino_v1": {"model_type": "vit", "hidden_size": 384, "patch_size": 8, "num_hidden_layers": 12}}  # fmt: skip
    folders = {}
    for key, config in configs.items():
        (tmp_path / "theirs" / key).mkdir(parents=True)
        (tmp_path / "theirs" / key / "config.json").write_text(json.dumps(config))
        folders[key] = tmp_path / "theirs" / key
    assert check_models(folders, JUDGE_MODEL) == []
    assert check_models({**folders, "dino": world["dino_v1"]}, JUDGE_MODEL)[0].startswith("dino: dino_v1 is not their model")


def test_a_checkout_without_their_prompts_or_another_layout_is_refused(world, tmp_path):
    with pytest.raises(ProtocolError, match="user_prompt_subject_full"):
        load_prompts(tmp_path)
    assert load_prompts(world["repo"]).style[1] == PROMPTS["gpt_prompt_style_full"]
    from tests.eval.eval_bench import make_bench

    (tmp_path / "made" / "s0").mkdir(parents=True)
    smooth_image(1).save(tmp_path / "made" / "s0" / "p00.png")
    ours = EvalConfig(bench=make_bench(tmp_path / "ours"), out=tmp_path / "o", sources=[ImageSource("x", tmp_path / "made")],
                      protocol="dreambench++", protocol_dir=world["repo"], clip=world["clip"], progress=False)  # fmt: skip
    with pytest.raises(ProtocolError, match="scores the DreamBench\\+\\+ benchmark; .* is the dsd layout"):
        run_eval(ours)


def test_their_exchange_reaches_gemini_as_user_model_user(world):
    from dsd.eval.protocol import ProtocolJudge
    from dsd.providers import ProviderConfig, make_provider

    prompts = load_prompts(world["repo"])
    ref = next(world["bench"].glob("images/style/0.jpg"))
    with FakeLLMServer(responder=lambda req: "Looks alike.\nScore: 4") as srv:
        config = ProviderConfig(kind="gemini", model="gemini-x", base_url=srv.gemini_base_url, max_retries=0)
        with make_provider(config, api_key="k") as provider:
            score = ProtocolJudge(provider, prompts, [str(ref)]).score_sync(str(ref), str(ref), "it on the moon")
        bodies = [r.body for r in srv.requests]
    assert score.cp == 1.0 and score.pf == 1.0
    roles = [[c["role"] for c in b["contents"]] for b in bodies]
    assert roles == [["user", "model", "user"]] * 2
    texts = sorted(b["contents"][0]["parts"][0]["text"] for b in bodies)
    assert texts == sorted([PROMPTS["user_prompt_style_full"], PROMPTS["user_prompt_text_full"]])
