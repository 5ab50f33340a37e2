"""Benchmark layouts (ours, DreamBench++, DreamBench) and image folders made by other systems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dsd.eval.layout import BenchmarkError, detect_layout, load_benchmark
from dsd.eval.stages import ImageSource, collect_folder
from tests.eval.eval_bench import PROMPTS, make_bench


def _img(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), colour).save(path)
    return path


def test_our_layout_subjects_prompts_categories_and_ids(tmp_path):
    root = make_bench(tmp_path / "b")
    with open(root / "prompts.jsonl", "a") as fh:
        fh.write(json.dumps({"prompt": "only for s1", "subject": "s1", "id": "extra"}) + "\n")
    _img(root / "subjects" / "s0" / "zz_second.png")  # not the reference: the first by name is
    bench = load_benchmark(root)
    assert bench.kind == "dsd" and sorted(bench.subjects) == ["s0", "s1"]
    assert bench.subjects["s0"].reference.name == "ref.png"
    assert bench.subjects["s1"].category == "object" and bench.subjects["s1"].name == "thing 1"
    assert [p.key for p in bench.prompts] == ["s0/p00", "s1/p00", "s0/p01", "s1/p01", "s0/p02", "s1/p02", "s1/extra"]
    assert {p.category for p in bench.prompts} == {"photorealistic", "stylized", "imaginative", "default"}
    small = bench.select(["s1"], max_prompts=2)
    assert [p.key for p in small.prompts] == ["s1/p00", "s1/p01"] and list(small.subjects) == ["s1"]
    with pytest.raises(BenchmarkError, match="no subject"):
        bench.select(["nope"])


def test_prompts_txt_applies_to_every_subject(tmp_path):
    root = make_bench(tmp_path / "b")
    (root / "prompts.jsonl").unlink()
    (root / "prompts.txt").write_text("a cat in space\n\nthe same cat underwater\n")
    bench = load_benchmark(root, "dsd")
    assert [p.key for p in bench.prompts] == ["s0/p00", "s1/p00", "s0/p01", "s1/p01"]


@pytest.mark.parametrize(
    "line, message",
    [("{not json", "not valid JSON"), (json.dumps({"subject": "s0"}), "non-empty"),
     (json.dumps({"prompt": "x", "subject": "ghost"}), "ghost"), (json.dumps({"prompt": "x", "id": "a/b"}), "a/b")],
)  # fmt: skip
def test_our_layout_errors_name_the_line(tmp_path, line, message):
    root = make_bench(tmp_path / "b")
    (root / "prompts.jsonl").write_text(line + "\n")
    with pytest.raises(BenchmarkError, match=message):
        load_benchmark(root)


def test_not_a_benchmark_lists_the_layouts(tmp_path):
    with pytest.raises(BenchmarkError, match="DreamBench"):
        detect_layout(tmp_path)
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_benchmark(tmp_path / "missing")


def test_dreambench_plus_layout(tmp_path):
    root = tmp_path / "dbpp"
    for category, index, subject in (("animal", "00", "corgi dog"), ("style", "03", "ink wash")):
        _img(root / "images" / category / f"{index}.jpg")
        prompts = [f"prompt {k} for {subject}" for k in range(9)]
        (root / "captions" / category).mkdir(parents=True, exist_ok=True)
        (root / "captions" / category / f"{index}.txt").write_text("\n".join([subject, *prompts]) + "\n")
    bench = load_benchmark(root)
    assert bench.kind == "dreambench_plus" and sorted(bench.subjects) == ["animal_00", "style_03"]
    assert bench.subjects["animal_00"].name == "corgi dog" and bench.subjects["style_03"].category == "style"
    cats = [p.category for p in bench.prompts if p.subject == "animal_00"]
    assert cats == ["photorealistic"] * 4 + ["stylized"] * 3 + ["imaginative"] * 2
    assert bench.prompts[0].text == "prompt 0 for corgi dog" and bench.prompts[0].id == "p0"


DREAMBENCH_TXT = """Classes

subject_name,class
backpack,backpack
dog2,dog

Prompts

Object Prompts
prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a red {0} {1}'.format(unique_token, class_token)
]

Live Subject Prompts
prompt_list = [
'a {0} {1} in the snow'.format(unique_token, class_token),
'a {0} {1} wearing a santa hat'.format(unique_token, class_token),
'a {0} {1} in a purple wizard outfit'.format(unique_token, class_token)
]
"""


def test_dreambench_layout(tmp_path):
    root = tmp_path / "dreambooth"
    (root / "dataset").mkdir(parents=True)
    (root / "dataset" / "prompts_and_classes.txt").write_text(DREAMBENCH_TXT)
    _img(root / "dataset" / "backpack" / "00.jpg")
    _img(root / "dataset" / "dog2" / "00.jpg")
    bench = load_benchmark(root)
    assert bench.kind == "dreambench"
    assert bench.subjects["dog2"].category == "live_subject" and bench.subjects["backpack"].category == "object"
    texts = {p.key: p.text for p in bench.prompts}
    assert texts["backpack/p00"] == "a backpack in the jungle" and texts["backpack/p01"] == "a red backpack"
    assert texts["dog2/p01"] == "a dog wearing a santa hat" and len(texts) == 5


def test_image_folders_of_other_systems(tmp_path, caplog):
    bench = load_benchmark(make_bench(tmp_path / "b", prompts=[*PROMPTS, {"prompt": "x", "id": "p00_b", "subject": "s0"}]))
    folder = tmp_path / "kontext"
    for name in ("p00.png", "p01_seed3.jpg", "p00_b_1.png", "notes.png"):
        _img(folder / "s0" / name)
    rows = collect_folder(ImageSource("kontext", folder), bench)
    got = {(r["id"], r["prompt_id"], r["sample"]) for r in rows}
    # "p00_b_1" belongs to the longer id p00_b, not to p00 with sample "b_1"
    assert got == {("kontext/s0/p00", "p00", ""), ("kontext/s0/p01_seed3", "p01", "seed3"), ("kontext/s0/p00_b_1", "p00_b", "1")}
    assert "notes.png" in caplog.text
    with pytest.raises(BenchmarkError, match="--list"):
        collect_folder(ImageSource("empty", tmp_path / "b"), bench)


def test_cli_lists_ids_and_says_what_is_wrong(tmp_path, capsys):
    from dsd.__main__ import main

    bench = make_bench(tmp_path / "b")
    assert main(["eval", "--bench", str(bench), "--out", str(tmp_path / "o"), "--list", "--max-prompts", "1"]) == 0
    out = capsys.readouterr().out
    assert "s0/p00\tphotorealistic\tthe subject on a beach at sunset" in out and "s1/p00" in out and "p01" not in out
    cases = [
        (["--bench", str(tmp_path / "nope")], "does not exist"),
        (["--bench", str(bench)], "nothing to score"),
        (["--bench", str(bench), "--adapter", "a.safetensors"], "need --flux"),
        (["--bench", str(bench), "--images", f"x={tmp_path}", "--images", f"x={tmp_path}"], "given twice"),
        (["--bench", str(bench), "--images", str(tmp_path / "missing")], "does not exist"),
    ]
    for args, message in cases:
        assert main(["eval", "--out", str(tmp_path / "o"), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
