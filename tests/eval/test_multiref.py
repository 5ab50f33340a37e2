"""``dsd eval`` multi-reference mode (issue 20): subjects' pictures as references, ``--references K[,K]``,
systems per k, the ``references`` column, CP per k in the summary, the CLI text and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dsd.eval.layout import BenchmarkError, load_benchmark
from dsd.eval.run import EvalConfig, parse_references, per_k, references_of, run_eval
from dsd.eval.sampling import ModelSpec, SampleSettings, read_samples
from dsd.eval.tables import aggregate, base_system
from dsd.tiny import make_tiny
from tests.eval.eval_bench import PROMPTS, judge_responder
from tests.eval.test_layout import DREAMBENCH_TXT, _img
from tests.eval_fixtures import smooth_image
from tests.support.llm_server import FakeLLMServer


def make_multi_bench(root: Path, pictures: tuple[int, ...] = (3, 3)) -> Path:
    """Subjects s0, s1, ... with ``pictures[i]`` smooth pictures each (a.png, b.png, ...)."""
    for i, n in enumerate(pictures):
        folder = root / "subjects" / f"s{i}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(n):
            smooth_image(seed=100 * i + j, size=64).save(folder / f"{'abcdef'[j]}.png")
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS[:2]))
    return root


def test_subjects_pictures_are_the_references_in_name_order(tmp_path) -> None:
    bench = load_benchmark(make_multi_bench(tmp_path / "b", (3, 1)))
    s0 = bench.subjects["s0"]
    assert [p.name for p in s0.pictures] == ["a.png", "b.png", "c.png"] and s0.reference.name == "a.png"
    assert [p.name for p in s0.references(2)] == ["a.png", "b.png"]
    bench.check_references(1)
    with pytest.raises(BenchmarkError, match=r"--references 2 needs 2 pictures per subject; 1 subject\(s\) have fewer: s1 \(1\)"):
        bench.check_references(2)
    with pytest.raises(BenchmarkError, match="has 1 picture"):
        bench.subjects["s1"].references(3)
    # judge_reference: scored against, never given as a reference
    (tmp_path / "b" / "subjects" / "s0" / "subject.json").write_text(json.dumps({"judge_reference": "c.png"}))
    s0 = load_benchmark(tmp_path / "b").subjects["s0"]
    assert s0.reference.name == "c.png" and [p.name for p in s0.pictures] == ["a.png", "b.png"]
    (tmp_path / "b" / "subjects" / "s0" / "subject.json").write_text(json.dumps({"judge_reference": "z.png"}))
    with pytest.raises(BenchmarkError, match="judge_reference 'z.png' is not a picture"):
        load_benchmark(tmp_path / "b")


def test_dreambench_subjects_hold_every_photo(tmp_path) -> None:
    root = tmp_path / "dreambooth"
    (root / "dataset").mkdir(parents=True)
    (root / "dataset" / "prompts_and_classes.txt").write_text(DREAMBENCH_TXT)
    for name in ("02.jpg", "00.jpg", "01.jpg", "03.jpg"):
        _img(root / "dataset" / "backpack" / name)
    _img(root / "dataset" / "dog2" / "00.jpg")
    bench = load_benchmark(root)
    assert [p.name for p in bench.subjects["backpack"].references(3)] == ["00.jpg", "01.jpg", "02.jpg"]
    assert len(bench.subjects["backpack"].pictures) == 4 and len(bench.subjects["dog2"].pictures) == 1
    bench.select(["backpack"]).check_references(4)


def test_references_flag_names_systems_per_k() -> None:
    assert parse_references("3") == (3,) and parse_references("3, 1,2,2") == (1, 2, 3)
    for bad in ("0", "two", "1,,2", "9"):
        with pytest.raises(BenchmarkError, match="--references"):
            parse_references(bad)
    models = [ModelSpec("dsd", Path("flux")), ModelSpec("base", Path("flux"), plain_base=True)]
    assert per_k(models, (1,)) == models  # today's names and files
    named = per_k(models, (1, 3))
    assert [(m.name, m.references) for m in named] == [("dsd@k1", 1), ("dsd@k3", 3), ("base@k1", 1), ("base@k3", 3)]
    assert references_of("dsd@k3") == 3 and references_of("dsd") == 1 and base_system("dsd@k12") == "dsd"


def _images(root: Path, bench: Path, brightness: int) -> Path:
    """Outputs for every (subject, prompt) of ``bench``, as a system made elsewhere would leave them."""
    for subject in ("s0", "s1"):
        for k in range(2):
            img = smooth_image(seed=brightness * 10 + k, size=64).point(lambda v, b=brightness: min(255, v + b))
            (root / subject).mkdir(parents=True, exist_ok=True)
            img.save(root / subject / f"p{k:02d}.png")
    return root


def test_per_k_scores_table_summary_text_and_report(tmp_path, monkeypatch) -> None:
    """Images labelled NAME@kK through the CLI's config, the toy-free judge: the references column, the summary's
    "references" level (CP per k), the CLI text and the report's section and plot."""
    from dsd.eval.report import overall_text
    from dsd.eval.run import JudgeSettings
    from dsd.eval.stages import ImageSource

    bench = make_multi_bench(tmp_path / "b")
    sources = [ImageSource(f"dsd@k{k}", _images(tmp_path / f"k{k}", bench, 20 * k)) for k in (1, 2, 3)]
    sources.append(ImageSource("other", _images(tmp_path / "other", bench, 5)))
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeLLMServer(responder=judge_responder) as srv:
        cfg = EvalConfig(bench=bench, out=tmp_path / "out", sources=sources, progress=False,
                         judge=JudgeSettings("openai", "test-judge", srv.openai_base_url, max_retries=0))  # fmt: skip
        summary = run_eval(cfg)
    table = summary.table
    assert dict(table.groupby("system").references.first()) == {"dsd@k1": 1, "dsd@k2": 2, "dsd@k3": 3, "other": 1}
    per = aggregate(table)
    per = per[per.level == "references"].set_index(["system", "group"])
    assert sorted(per.index) == [("dsd", "k=1"), ("dsd", "k=2"), ("dsd", "k=3"), ("other", "k=1")]
    for k in (1, 2, 3):
        cp = table[table.system == f"dsd@k{k}"].cp.mean()
        assert per.loc[("dsd", f"k={k}"), "cp"] == pytest.approx(cp) and per.loc[("dsd", f"k={k}"), "images"] == 4
    text = overall_text(table)
    assert "concept preservation (CP) per number of references" in text and "  dsd: k=1 " in text and "k=3 " in text
    report = tmp_path / "out" / "report"
    page = (report / "index.html").read_text()
    assert "Per number of references (k)" in page and "plots/references.png" in page
    assert (report / "plots" / "references.png").stat().st_size > 1000
    assert "references" in pd.read_csv(report / "summary.csv").level.unique()
    assert "references" in pd.read_parquet(report / "scores.parquet").columns


def test_single_reference_run_has_no_per_k_section(tmp_path) -> None:
    bench = make_multi_bench(tmp_path / "b")
    from dsd.eval.stages import ImageSource

    cfg = EvalConfig(bench=bench, out=tmp_path / "out", sources=[ImageSource("a", _images(tmp_path / "a", bench, 5))],
                     progress=False)  # fmt: skip
    table = run_eval(cfg).table
    assert (table.references == 1).all() and "references" not in set(aggregate(table).level)
    assert "Per number of references" not in (tmp_path / "out" / "report" / "index.html").read_text()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("multiref_tiny") / "tiny")


def test_sampling_gives_each_k_its_first_pictures(tiny, tmp_path) -> None:
    """The tiny release sampled with k = 1 and k = 2: a (k + 1)-frame canvas, the same file for k = 1 as without
    multi-reference mode, frame MSE over the k reconstructions, and a rerun draws nothing."""
    bench = make_multi_bench(tmp_path / "b")
    settings = SampleSettings(seeds=(0,), steps=2, width=128, height=64)
    plain = EvalConfig(bench=bench, out=tmp_path / "plain", models=[ModelSpec("dsd", tiny.flux_dir, release=tiny.release_dir)],
                       max_prompts=1, sampling=settings, progress=False)  # fmt: skip
    run_eval(plain)
    models = per_k([ModelSpec("dsd", tiny.flux_dir, release=tiny.release_dir)], (1, 2))
    cfg = EvalConfig(bench=bench, out=tmp_path / "out", models=models, references=(1, 2), max_prompts=1, sampling=settings,
                     progress=False)  # fmt: skip
    summary = run_eval(cfg)
    table = summary.table
    assert summary.sampled == 4 and sorted(set(table.system)) == ["dsd@k1", "dsd@k2"]
    assert table.recon_mse.between(0, 1).all() and dict(table.groupby("system").references.first()) == {"dsd@k1": 1, "dsd@k2": 2}
    one = (tmp_path / "out" / "samples" / "dsd@k1" / "s0" / "p00_s0.png").read_bytes()
    assert one == (tmp_path / "plain" / "samples" / "dsd" / "s0" / "p00_s0.png").read_bytes()  # k = 1 as before
    assert one != (tmp_path / "out" / "samples" / "dsd@k2" / "s0" / "p00_s0.png").read_bytes()
    assert {r["references"] for r in read_samples(tmp_path / "out", "dsd@k2")} == {2}
    assert run_eval(cfg).sampled == 0
    short = make_multi_bench(tmp_path / "short", (3, 1))
    with pytest.raises(BenchmarkError, match="s1 \\(1\\)"):
        run_eval(EvalConfig(bench=short, out=tmp_path / "o2", models=models, sampling=settings, progress=False))


def test_cli_references_flag(tmp_path, capsys) -> None:
    """From the command line: labelled folders give the per-k lines; a bad --references or too few pictures is exit 2."""
    from dsd.__main__ import main

    bench = make_multi_bench(tmp_path / "b", (3, 2))
    folders = [f"dsd@k{k}={_images(tmp_path / f'k{k}', bench, 20 * k)}" for k in (1, 2)]
    args = ["eval", "--bench", str(bench), "--out", str(tmp_path / "o"), "--no-progress",
            *[x for f in folders for x in ("--images", f)]]  # fmt: skip
    assert main([*args, "--clip", str(_clip(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "CLIP-I per number of references" in out and "dsd: k=1 " in out and "k=2 " in out
    assert main([*args, "--references", "1,x"]) == 2
    assert "each value must be an integer from 1 to" in capsys.readouterr().err
    from tests.eval.eval_bench import write_adapter

    adapter = write_adapter(tmp_path / "a.safetensors", seed=1)
    assert main([*args, "--flux", str(tmp_path), "--adapter", str(adapter), "--references", "3"]) == 2
    err = capsys.readouterr().err
    assert "--references 3 needs 3 pictures per subject" in err and "s1 (2)" in err and "Traceback" not in err


def _clip(tmp_path: Path) -> Path:
    from tests.eval_fixtures import write_tiny_clip

    return write_tiny_clip(tmp_path / "clip")


@pytest.mark.browser
def test_per_k_report_opens_in_chromium(tmp_path) -> None:
    """The multi-reference report, copied elsewhere, in the real browser: the per-k table and curve load, no error."""
    import shutil

    from playwright.sync_api import sync_playwright

    from dsd.eval.stages import ImageSource
    from tests.needs import require_chromium

    bench = make_multi_bench(tmp_path / "b")
    sources = [ImageSource(f"dsd@k{k}", _images(tmp_path / f"k{k}", bench, 20 * k)) for k in (1, 2)]
    run_eval(EvalConfig(bench=bench, out=tmp_path / "out", sources=sources, clip=_clip(tmp_path), progress=False))
    report = tmp_path / "elsewhere" / "report"
    shutil.copytree(tmp_path / "out" / "report", report)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=require_chromium(), headless=True)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(report.joinpath("index.html").as_uri())
            page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=60_000)
            curve = page.evaluate("Array.from(document.images).filter(i => i.src.endsWith('references.png'))"
                                  ".map(i => i.naturalWidth)")  # fmt: skip
            heading = page.locator("h2", has_text="Per number of references").count()
            rows = page.locator("h2:has-text('Per number of references') + p + table tbody tr").all_inner_texts()
        finally:
            browser.close()
    assert errors == [] and heading == 1 and len(curve) == 1 and curve[0] > 100
    assert [r.split("\t")[:2] for r in rows] == [["dsd", "1"], ["dsd", "2"]]
