"""The toy loop's own parts (benchmarks/toy_loop.py, tests/support/toy_pretrain.py): the pretrained toy base,
the held-out benchmark in "grid" placement with its swapped-reference twin, and training's validation set."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image, ImageChops

from benchmarks import toy_loop
from datagen.teacher import toy_domain as dom
from tests.support.toy_vision import identity_score, read_picture
from training.config import load_config


def _modulations(transformer) -> list[torch.Tensor]:
    return [b.norm1.linear.weight for b in transformer.transformer_blocks] + [transformer.norm_out.linear.weight]


def test_pretraining_trains_the_adaln_zero_base_in_place(tmp_path) -> None:
    from diffusers import FluxTransformer2DModel

    from tests.support.toy_model import TOY_LOOP_TRANSFORMER_CONFIG, make_toy_pipeline
    from tests.support.toy_pretrain import grid_agreement, pretrain_toy_base

    make_toy_pipeline(tmp_path, config=TOY_LOOP_TRANSFORMER_CONFIG, adaln_zero=True)
    before = FluxTransformer2DModel.from_pretrained(tmp_path / "transformer")
    assert all(bool((w == 0).all()) for w in _modulations(before)), "adaLN-Zero: every modulation starts at zero"
    info = pretrain_toy_base(tmp_path, steps=3, pairs=8, batch=4)
    after = FluxTransformer2DModel.from_pretrained(tmp_path / "transformer")
    assert info["pretrain_steps"] == 3 and torch.isfinite(torch.tensor(info["pretrain_loss"]))
    assert all(bool((w != 0).any()) for w in _modulations(after)), "pretraining moved every modulation"
    assert after.config.num_attention_heads == TOY_LOOP_TRANSFORMER_CONFIG["num_attention_heads"]
    # the summary's measure of the base: its own two-panel grids, read by the toy judge's reader
    agreement = grid_agreement(tmp_path, n=2, side=64)
    assert set(agreement) == {"grid_agreement_cp", "grid_agreement_pf"}
    assert all(0.0 <= v <= 1.0 for v in agreement.values()), agreement


def test_base_agreement_is_kept_with_the_base_and_not_sampled_again(tmp_path) -> None:
    kept = {"vae_psnr_db": 26.0, "grid_agreement_cp": 0.3, "grid_agreement_pf": 0.7}
    (tmp_path / "dsd_toy.json").write_text(json.dumps(kept))  # no model here: sampling would fail
    assert toy_loop.base_agreement(tmp_path) == {"grid_agreement_cp": 0.3, "grid_agreement_pf": 0.7}


def test_datagen_config_sets_the_teachers_jitter(tmp_path) -> None:
    """The loop's teacher draws each panel exactly at its context's place (``JITTER`` 0); the config passes a
    jitter on, and without one leaves the teacher's own default."""
    from datagen.config import load_config as load_datagen_config
    from datagen.teacher.config import TOY_JITTER

    def jitter(**kw) -> float:
        path = toy_loop.write_datagen_config(tmp_path, 4, "http://127.0.0.1:1/v1", "grid", **kw)
        return load_datagen_config(path).teacher.toy_jitter

    assert toy_loop.JITTER == 0.0 and jitter(jitter=toy_loop.JITTER) == 0.0 and jitter(jitter=0.05) == 0.05
    assert jitter() == TOY_JITTER
    teacher = load_datagen_config(toy_loop.write_datagen_config(tmp_path, 4, "http://127.0.0.1:1/v1", "grid", views="sides",
                                                                whole_share=0.25)).teacher  # fmt: skip
    assert (teacher.toy_views, teacher.toy_whole_share) == ("sides", 0.25)


def test_grid_benchmark_asks_the_reference_placement_and_swaps_references(tmp_path) -> None:
    bench, oracle = toy_loop.write_benchmark(tmp_path, 4, "grid", prompts_per_subject=3)
    records = [json.loads(line) for line in (bench / "prompts.jsonl").read_text().splitlines()]
    assert len(records) == 12 and len({r["subject"] for r in records}) == 4
    for r in records:
        ref = Image.open(bench / "subjects" / r["subject"] / "ref.png").convert("RGB")
        target = Image.open(oracle / r["subject"] / f"{r['id']}.png").convert("RGB")
        asked = dom.parse_context(r["prompt"])
        # same placement: the object's box is where the reference has it; only the background differs
        ref_box = ImageChops.difference(ref, Image.new("RGB", ref.size, ref.getpixel((0, 0)))).getbbox()
        target_box = ImageChops.difference(target, Image.new("RGB", target.size, target.getpixel((0, 0)))).getbbox()
        assert ref_box == target_box and target.getpixel((0, 0)) == dom.BACKGROUNDS[asked.background]
        assert ref.getpixel((0, 0)) != target.getpixel((0, 0))
    subjects = sorted({r["subject"] for r in records})
    swapped = tmp_path / "bench_other_ref"
    for subject in subjects:
        ref = Image.open(bench / "subjects" / subject / "ref.png").convert("RGB")
        twin = Image.open(swapped / "subjects" / subject / "ref.png").convert("RGB")
        other, mine = read_picture(twin), read_picture(ref)
        assert other.found and identity_score(mine, other) < 1.0, "the twin shows another identity"
        assert (other.position, other.size, other.background) == (mine.position, mine.size, mine.background)
    assert (swapped / "prompts.jsonl").read_text() == (bench / "prompts.jsonl").read_text()


def test_validation_set_is_held_out_and_loads_as_training_config(tmp_path) -> None:
    sets = toy_loop.write_validation(tmp_path, 4, "grid")
    cfg = load_config(toy_loop.CONFIG, sets)
    bench_subjects = {i.key for i in toy_loop.heldout_identities()[:4]}
    names = {p.rsplit("/", 1)[-1].removesuffix(".png") for p in cfg.sampling.references}
    assert len(names) == toy_loop.VALIDATION_ITEMS and not names & bench_subjects
    assert all(dom.identity_split(dom.Identity(*n.split("-"))) == "heldout" for n in names)
    assert len(cfg.sampling.prompts) == len(cfg.sampling.references)
    assert all(dom.parse_identity(p) is None for p in cfg.sampling.prompts), "captions name the context only"
    assert cfg.training.logit_mean == 1.5 and "norm1.linear" in cfg.network.target_modules


def test_stages_use_every_core_unless_told(monkeypatch) -> None:
    monkeypatch.delenv("DSD_TOY_THREADS", raising=False)
    assert toy_loop.stage_threads() >= 1 and toy_loop.loop_env()["OMP_NUM_THREADS"] == str(toy_loop.stage_threads())
    monkeypatch.setenv("DSD_TOY_THREADS", "1")  # where other work shares the cores
    assert toy_loop.loop_env()["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("DSD_TOY_THREADS", "two")
    with pytest.raises(ValueError, match="DSD_TOY_THREADS must be a whole number"):
        toy_loop.stage_threads()


def test_toy_judge_does_not_outlive_a_killed_run() -> None:
    """A benchmark killed mid-run (SIGKILL, or SIGTERM, which skips ``finally``) takes its judge server with it:
    the judge exits when its stdin pipe from the caller closes, so no server is left holding a port."""
    import socket
    import subprocess
    import sys
    import time
    from urllib.parse import urlparse

    code = "import time\nfrom benchmarks import toy_loop as t\nwith t.judge_server(t.loop_env()) as url:\n" \
           "    print(url, flush=True)\n    time.sleep(600)\n"  # fmt: skip
    caller = subprocess.Popen([sys.executable, "-c", code], cwd=toy_loop.REPO, stdout=subprocess.PIPE, text=True)
    try:
        url = urlparse(caller.stdout.readline().strip())
        socket.create_connection((url.hostname, url.port), timeout=10).close()  # the judge is up
    finally:
        caller.kill()
        caller.wait(30)
    deadline = time.monotonic() + 60  # generous: a busy 2-core machine
    while time.monotonic() < deadline:
        try:
            socket.create_connection((url.hostname, url.port), timeout=2).close()
        except OSError:
            return
        time.sleep(0.5)
    raise AssertionError(f"the toy judge at {url.geturl()} still answers 60 s after its caller was killed")


def test_rescore_benchmark_holds_new_identities_and_needs_a_finished_loop(tmp_path) -> None:
    """``--rescore``: identities after the benchmark's and validation's (none of theirs); a folder that is no
    finished loop is a clear exit before any work starts."""
    toy_loop.write_benchmark(tmp_path, 3, "grid")
    first = 3 + toy_loop.VALIDATION_ITEMS
    bench, oracle = toy_loop.write_benchmark(tmp_path, 2, "grid", first=first, name="bench_rescore")
    expected = {i.key for i in toy_loop.heldout_identities()[first : first + 2]}
    assert {p.name for p in (bench / "subjects").iterdir()} == expected == {p.name for p in oracle.iterdir()}
    assert {p.name for p in (tmp_path / "bench_rescore_other_ref" / "subjects").iterdir()} == expected
    assert not expected & {p.name for p in (tmp_path / "bench" / "subjects").iterdir()}
    with pytest.raises(SystemExit, match="not a finished toy loop"):
        toy_loop.main(["--out", str(tmp_path / "nothing"), "--rescore", "5"])
