"""Issue 20's toy variant: each panel whole or one side of the object, so one reference carries only part of
the identity. The judge reads the sides, curation compares what both views show, the teacher draws the
views from its own seeded stream, and the multi-reference benchmark keeps the whole object for the judge."""

from __future__ import annotations

import random

import numpy as np
import pytest

from datagen.config import PromptsConfig
from datagen.prompts import template_prompt
from datagen.teacher import toy_domain as dom
from datagen.teacher.toy import draw_grid, grid_plan
from tests.support.toy_judge import SIDE_TARGET, caption_for, curate_answer, tuple_answer
from tests.support.toy_vision import identity_score, read_picture, reading_of, same_identity

RED_STRIPES = dom.Identity("circle", "red", "blue", "stripes")
CTX = dom.Context("center", "large", "grey")


def test_vision_reads_every_view_of_random_identities() -> None:
    rng = random.Random(0)
    ids, ctxs = dom.all_identities(), dom.all_contexts()
    for _ in range(40):
        identity, ctx = rng.choice(ids), rng.choice(ctxs)
        for view in dom.VIEWS:
            assert read_picture(dom.draw_panel(identity, ctx, view=view)) == reading_of(identity, ctx, view), (identity, view)


def test_a_side_carries_half_the_identity() -> None:
    whole = reading_of(RED_STRIPES, CTX)
    plain, patterned = (read_picture(dom.draw_panel(RED_STRIPES, CTX, view=v)) for v in ("plain", "patterned"))
    assert (plain.body, plain.accent, plain.pattern) == ("red", "", "")
    assert (patterned.body, patterned.accent, patterned.pattern) == ("", "blue", "stripes")
    assert identity_score(whole, plain) == 0.5 and identity_score(whole, patterned) == 0.75
    # curation: the sides of one identity agree, a side that contradicts what the other view shows does not
    assert same_identity(plain, patterned) and same_identity(whole, plain) and same_identity(whole, patterned)
    other = read_picture(dom.draw_panel(dom.Identity("circle", "green", "blue", "stripes"), CTX, view="plain"))
    assert not same_identity(whole, other) and same_identity(other, patterned)  # the green body hides on that side


def test_captions_name_the_side_and_parse_back() -> None:
    for view in dom.VIEWS:
        caption = caption_for(reading_of(RED_STRIPES, CTX, view))
        assert dom.parse_view(caption) == view and dom.parse_context(caption) == CTX
    assert caption_for(reading_of(RED_STRIPES, CTX)) == "an object, front view, in a city street"


def test_tuple_verdict_over_sides() -> None:
    views = [read_picture(dom.draw_panel(RED_STRIPES, CTX, view=v)) for v in ("plain", "patterned", "whole")]
    assert tuple_answer(views)["same_identity"] is True
    odd = read_picture(dom.draw_panel(dom.Identity("circle", "red", "green", "stripes"), CTX, view="patterned"))
    verdict = tuple_answer([*views[:2], odd])
    assert verdict["same_identity"] is False and "[2, 3]" in verdict["reason"]  # the two patterned sides disagree


def test_whole_targets_rejects_a_side_as_the_target_only() -> None:
    plain, patterned, whole = (read_picture(dom.draw_panel(RED_STRIPES, CTX, view=v)) for v in ("plain", "patterned", "whole"))
    assert curate_answer(plain, whole, whole_targets=True)["same_identity"] is True  # a side as the reference is kept
    assert curate_answer(whole, plain)["same_identity"] is True
    verdict = curate_answer(whole, plain, whole_targets=True)
    assert verdict["same_identity"] is False and verdict["reason"] == SIDE_TARGET
    assert tuple_answer([plain, patterned, whole], whole_targets=True)["same_identity"] is True
    assert tuple_answer([plain, whole, patterned], whole_targets=True)["reason"] == SIDE_TARGET
    other = read_picture(dom.draw_panel(dom.Identity("circle", "green", "blue", "stripes"), CTX))
    assert "differ" in curate_answer(other, whole, whole_targets=True)["reason"]  # another identity stays that reject


def test_teacher_sides_keep_the_whole_grids_draws() -> None:
    cfg = PromptsConfig(mode="template", layouts=("3x3",), seed=0)
    rec = template_prompt({"id": "c0", "caption": RED_STRIPES.text}, cfg)
    seen = []
    for seed in range(30):
        whole, sides = grid_plan(rec["prompt"], seed, "grid"), grid_plan(rec["prompt"], seed, "grid", "sides")
        assert (whole.identities, whole.contexts, whole.odd_panel, whole.views) == (
            sides.identities, sides.contexts, sides.odd_panel, ())  # fmt: skip
        seen += sides.views
    assert (sides.rows, sides.cols) == (3, 3)
    shares = np.array([seen.count(v) for v in dom.VIEWS]) / len(seen)
    assert np.all(np.abs(shares - np.array([0.5, 0.25, 0.25])) < 0.08), shares
    grid = draw_grid(sides, 432, 432, seed=29)
    for k, (identity, ctx, view) in enumerate(zip(sides.identities, sides.contexts, sides.views, strict=True)):
        r, c = divmod(k, 3)
        panel = grid.crop((8 + c * 144, 8 + r * 144, 8 + c * 144 + 128, 8 + r * 144 + 128))
        assert read_picture(panel).view == view and same_identity(read_picture(panel), reading_of(identity, ctx, view))


def test_whole_share_sets_the_share_of_whole_panels() -> None:
    """``teacher.toy_whole_share``: 0.5 (the default) draws what the fixed weights (2, 1, 1) drew before it was a
    setting; 0 and 1 give no whole panel and only whole panels; 0.25 a quarter, the sides splitting the rest."""
    from datagen.teacher.config import TeacherConfig

    prompt = template_prompt({"id": "c0", "caption": RED_STRIPES.text}, PromptsConfig(mode="template", layouts=("3x3",), seed=0))["prompt"]

    def views(share: float, seeds: range = range(200)) -> list[str]:
        return [v for seed in seeds for v in grid_plan(prompt, seed, "grid", "sides", share).views]

    def fixed_weights(seed: int) -> list[str]:  # the draw of the code before the setting
        rng = random.Random(f"toy-views|{seed}")
        return [rng.choices(dom.VIEWS, weights=(2, 1, 1))[0] for _ in range(9)]

    assert views(0.5, range(30)) == [v for seed in range(30) for v in fixed_weights(seed)]
    assert list(grid_plan(prompt, 3, "grid", "sides").views) == fixed_weights(3)  # the default share
    assert "whole" not in views(0.0) and set(views(1.0)) == {"whole"}
    seen = views(0.25)
    shares = np.array([seen.count(v) for v in dom.VIEWS]) / len(seen)
    assert np.all(np.abs(shares - np.array([0.25, 0.375, 0.375])) < 0.05), shares
    with pytest.raises(ValueError, match="toy_whole_share"):
        TeacherConfig(backend="toy", toy_whole_share=1.5)


def test_sides_benchmark_gives_sides_and_judges_against_the_whole(tmp_path) -> None:
    from benchmarks.toy_multiref import write_sides_benchmark
    from dsd.eval.layout import load_benchmark

    bench_dir, oracle = write_sides_benchmark(tmp_path, n_subjects=4, placement="grid")
    bench = load_benchmark(bench_dir)
    assert len(bench.subjects) == 4 and len(bench.prompts) == 8
    for subject in bench.subjects.values():
        assert subject.reference.name == "whole.png"
        refs = [read_picture_path(p) for p in subject.references(3)]
        assert all(r.view in ("plain", "patterned") for r in refs)
        assert read_picture_path(subject.reference).view == "whole"
        assert all(same_identity(read_picture_path(subject.reference), r) for r in refs)
    assert sorted(p.name for p in oracle.iterdir()) == sorted(bench.subjects)


def read_picture_path(path):
    from PIL import Image

    with Image.open(path) as im:
        return read_picture(im)


def test_pretraining_rows_of_sides_and_several_widths() -> None:
    """The multi-reference base pretrains on rows of 2 to 4 panels whose views vary; the two-panel base's
    draws stay what they were (one size, all whole)."""
    from tests.support.toy_pretrain import grid_pairs

    rows = grid_pairs(60, "grid", 0, "sides", (2, 3, 4))
    assert {len(c) for _, c, _ in rows} == {2, 3, 4}
    assert all(len(c) == len(v) and len({(x.position, x.size) for x in c}) == 1 for _, c, v in rows)
    assert set().union(*(set(v) for _, _, v in rows)) == set(dom.VIEWS)
    plain = grid_pairs(20, "grid", 0)
    assert all(len(c) == 2 and v == ("whole", "whole") for _, c, v in plain)
    rng = random.Random(0)  # the draws of the two-panel base before views existed
    ids = [i for i in dom.all_identities() if dom.identity_split(i) == "train"]
    first, (second,) = dom.draw_contexts(rng, 1, "grid")
    assert plain[0][:2] == (rng.choice(ids), (first, second))


def test_sides_diagnosis_datasets_split_the_pairs_by_view(tmp_path, monkeypatch) -> None:
    """benchmarks/toy_sides_diagnosis.py's datasets, through the real stages: the sides grids' pairs, those
    with a whole target, those whole on both ends (nested, views as the toy judge described them), and as
    many of the whole-view loop's own pairs."""
    import pandas as pd

    from benchmarks import toy_loop as loop
    from benchmarks.toy_sides_diagnosis import datasets, sides_datagen
    from datagen.cli import main as datagen_main
    from tests.support.llm_server import FakeLLMServer
    from tests.support.toy_judge import toy_responder

    monkeypatch.setenv(loop.KEY_ENV, "toy")
    env = loop.loop_env()
    with FakeLLMServer(responder=toy_responder) as srv:
        cfg = loop.write_datagen_config(tmp_path, 12, srv.openai_base_url, "grid")
        assert datagen_main(["run", "--config", str(cfg), "--workdir", str(tmp_path / "datagen"), "--no-progress", "-q"]) == 0
        paths = datasets(tmp_path, sides_datagen(tmp_path, srv.openai_base_url, env), env)
    frames = {name: pd.read_parquet(p / "index.parquet") for name, p in paths.items()}
    keys = {name: set(f.key) for name, f in frames.items()}
    assert keys["whole_pairs"] < keys["whole_targets"] < keys["sides"]
    assert keys["whole_pairs"] < keys["covered"] < keys["sides"] and not keys["covered"] <= keys["whole_targets"]
    assert not frames["whole_targets"].caption.str.contains("its ").any()  # ("side view" is a pose)
    assert frames["sides"].caption.str.contains("its plain side").any()
    assert len(frames["loop_subset"]) == len(frames["whole_pairs"]) > 0


def test_the_multi_reference_benchmark_reads_the_bases_panel_counts(capsys) -> None:
    """``--base-frames`` takes 2, 3 or 4 panels per pretraining row, comma-separated; anything else is a clear
    usage error before any work starts."""
    from benchmarks.toy_multiref import _frames, main

    assert _frames("2,3,4") == (2, 3, 4)
    for bad in ("2,5", "two", ""):
        with pytest.raises(SystemExit) as exc:
            main(["--out", "unused", "--base-frames", bad])
        assert exc.value.code == 2
        assert "--base-frames" in capsys.readouterr().err


def test_rescore_draws_new_subjects_and_needs_a_finished_run(tmp_path) -> None:
    """``--rescore``: its benchmark holds subjects after the run's benchmark and validation identities (none of
    theirs), and a folder that is no finished run is a clear exit before any work starts."""
    from benchmarks import toy_loop as loop
    from benchmarks.toy_multiref import main, write_sides_benchmark

    write_sides_benchmark(tmp_path, n_subjects=2, placement="grid")
    first = 2 + loop.VALIDATION_ITEMS
    rescore, oracle = write_sides_benchmark(tmp_path, n_subjects=2, placement="grid", first=first, name="bench_rescore")
    expected = [i.key for i in loop.heldout_identities()[first : first + 2]]
    assert sorted(p.name for p in (rescore / "subjects").iterdir()) == sorted(expected)
    assert oracle == tmp_path / "oracle_rescore" and not set(expected) & {p.name for p in (tmp_path / "bench_sides" / "subjects").iterdir()}
    with pytest.raises(SystemExit, match="no finished toy_multiref run"):
        main(["--out", str(tmp_path), "--rescore", "4"])
