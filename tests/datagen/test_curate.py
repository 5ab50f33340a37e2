from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from datagen.config import CurateConfig, DatagenInputError
from datagen.curate import run_curate
from dsd.manifest import read_records
from tests.support.llm_server import FakeLLMServer


def verdicts(w: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_records(w / "curate" / "verdicts.jsonl")}


@pytest.mark.parametrize("kind", ["openai", "gemini"])
def test_verdicts_chain_of_thought_and_cache(pairs_workdir: Path, kind: str, dg) -> None:
    w = pairs_workdir
    with FakeLLMServer(responder=dg.smart_responder(same=True, confidence=0.9)) as srv:
        vlm = dg.provider_cfg(srv, kind, input_usd_per_mtok=1.0, output_usd_per_mtok=2.0)
        s = run_curate(CurateConfig(min_confidence=0.7), w, vlm=vlm, progress=False)
        assert len(srv.requests) == 6 and s.items_out == 6
        req = srv.requests[0]
        assert len(req.images) == 2 and req.images[0][:3] == b"\xff\xd8\xff"  # JPEG by default
        assert req.image_mime_types == ["image/jpeg", "image/jpeg"]
        assert list(req.json_schema["properties"])[:4] == ["subject", "description_a", "description_b", "same_identity"]
        v = verdicts(w)["grid000_0_1"]
        assert v["accepted"] and v["verdict"] == "vlm" and v["caption"] == "a red rubber ball on grass"
        assert v["usage"]["input_tokens"] > 0
        assert s.usage.cost_usd > 0 and s.usage.requests == 6
        assert "LLM requests" in s.render() and "cost" in s.render()
        # rerun: nothing to do; fresh log: all answers come from the cache -> zero requests
        run_curate(CurateConfig(), w, vlm=vlm, progress=False)
        (w / "curate" / "verdicts.jsonl").unlink()
        s3 = run_curate(CurateConfig(), w, vlm=vlm, progress=False)
        assert len(srv.requests) == 6 and s3.usage.cached == 6 and s3.items_out == 6


def test_threshold_refusal_malformed_and_transient(pairs_workdir: Path, dg) -> None:
    w = pairs_workdir
    with FakeLLMServer(responder=dg.smart_responder(same=True, confidence=0.6)) as srv:
        srv.queue_failures([("refusal",), ("malformed",)])
        vlm = dg.provider_cfg(srv, max_concurrency=1, max_retries=0)
        s = run_curate(CurateConfig(min_confidence=0.7, refusal_retries=0), w, vlm=vlm, progress=False)
        vs = verdicts(w)
        assert len(vs) == 6 and s.items_out == 0
        kinds = sorted(v["verdict"] for v in vs.values())
        assert kinds == ["malformed", "refused", "vlm", "vlm", "vlm", "vlm"]
        assert s.reject_reasons["low confidence"] == 4
        # an unreachable server leaves pairs undone (no record), it never crashes
        (w / "curate" / "verdicts.jsonl").unlink()
        srv.queue_failures([("status", 503)] * 3)
        s2 = run_curate(CurateConfig(min_confidence=0.5), w, vlm=dataclasses.replace(vlm, cache_dir=str(w / "c2")),
                        progress=False)
        assert s2.extra["vlm failures (retry on rerun)"] == 3 and len(verdicts(w)) == 3


def test_a_refusal_is_asked_again_rephrased_then_final(pairs_workdir: Path, dg) -> None:
    from datagen.curate import REPHRASINGS

    w = pairs_workdir
    with FakeLLMServer(responder=dg.smart_responder(same=True, confidence=0.9)) as srv:
        vlm = dg.provider_cfg(srv, max_concurrency=1, max_retries=0)
        # both pairs refused on the first ask; on the retry one is refused again (final), one answered
        srv.queue_failures([("refusal",), ("refusal",), ("refusal",)])
        s = run_curate(CurateConfig(refusal_retries=1, max_pairs=2), w, vlm=vlm, progress=False)
        retried = [r for r in srv.requests if r.prompt.startswith(REPHRASINGS[0])]
        vs = sorted(verdicts(w).values(), key=lambda v: v["id"])
    assert len(vs) == 2 and s.items_out == 1
    refused = [v for v in vs if v["verdict"] == "refused"]
    assert len(refused) == 1 and refused[0]["attempts"] == 2
    assert refused[0]["reject_reason"].startswith("refused 2 time(s) (curate.refusal_retries = 1)")
    assert [v["attempts"] for v in vs if v["verdict"] == "vlm"] == [2]
    assert len(retried) == 2  # both refused pairs were asked again, with the rephrased preamble


def _with_views(w: Path, cfg: CurateConfig) -> dict[str, bytes]:
    """Write every panel's upload view as the panels stage does; {panel name: view bytes}."""
    from datagen.curate import panel_encoding
    from datagen.vlm_view import encode_view, read_rgb, view_path

    spec, out = panel_encoding(cfg), {}
    for panel in sorted((w / "panels" / "panels").glob("*_?.png")):
        out[panel.name] = encode_view(read_rgb(panel), spec)
        view_path(panel, spec).write_bytes(out[panel.name])
    return out


def _image_checking(responder):
    """A responder that, like the real APIs, answers HTTP 400 to a request with an undecodable image."""
    from dsd.images import UnreadableImage, read_image

    def respond(req):
        try:
            for image in req.images:
                read_image(image)
        except UnreadableImage:
            return ("status", 400)
        return responder(req)

    return respond


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "text": b"not an image\n"}[how])


@pytest.mark.parametrize(("how", "batch"), [("truncated", False), ("empty", False), ("text", False), ("empty", True)])
def test_a_damaged_upload_view_is_rebuilt_from_its_panel(pairs_workdir: Path, dg, how: str, batch: bool) -> None:
    """A view (the bytes sent to the VLM) cut short, empty or not an image is never sent: it is rebuilt from its
    panel (the same bytes the panels stage wrote) and the pair is asked as if nothing happened."""
    import json

    from datagen.cli import main
    from datagen.curate import panel_encoding
    from datagen.vlm_view import view_path

    w = pairs_workdir
    views = _with_views(w, CurateConfig())
    view = view_path(w / "panels" / "panels" / "grid001_1.png", panel_encoding(CurateConfig()))
    _damage(view, how)
    with FakeLLMServer(responder=_image_checking(dg.smart_responder())) as srv:
        extra = ["--set", "vlm.use_batch_api=true", "--set", "curate.batch_wait_s=5", "--set", "curate.batch_poll_s=0.01"]
        assert main(["curate", "--workdir", str(w), "--no-progress", *_vlm_sets(srv), *(extra if batch else [])]) == 0
        sent = {image for r in srv.requests for image in r.images}
    vs = verdicts(w)
    assert len(vs) == 6 and all(v["accepted"] for v in vs.values())
    assert sent == set(views.values())  # every panel sent as the panels stage encoded it, the damaged one too
    assert view.read_bytes() == views["grid001_1.png"]  # the view is repaired on disk
    summary = json.loads((w / "curate" / "summary.json").read_text())
    assert summary["rejected"] == 0 and "vlm failures (retry on rerun)" not in summary["extra"]


def test_an_unreadable_panel_is_undone_until_the_file_is_repaired(pairs_workdir: Path, dg) -> None:
    """A panel that cannot be read (its view damaged too) is that pair's reject in the summary, naming the file;
    nothing is sent for it and nothing recorded, so the rerun after the file is repaired asks that pair only."""
    import json

    from datagen.cli import main
    from datagen.curate import panel_encoding
    from datagen.summary import UNREADABLE
    from datagen.vlm_view import view_path

    w = pairs_workdir
    _with_views(w, CurateConfig())
    bad = w / "panels" / "panels" / "grid001_1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _damage(view_path(bad, panel_encoding(CurateConfig())), "empty")
    with FakeLLMServer(responder=_image_checking(dg.smart_responder())) as srv:
        args = ["curate", "--workdir", str(w), "--no-progress", *_vlm_sets(srv)]
        for _ in range(2):  # the rerun before the repair asks nothing and counts the same
            assert main(args) == 0
            assert len(srv.requests) == 5 and sorted(verdicts(w)) == sorted(set(PAIR_IDS) - {"grid001_0_1"})
            summary = json.loads((w / "curate" / "summary.json").read_text())
            assert summary["items_out"] == 5 and summary["rejected"] == 1 and summary["reject_reasons"] == {UNREADABLE: 1}
            example = summary["extra"]["first unreadable image"]
            assert "unreadable image" in example and "grid001_1.png" in example and "upload view" in example
        dg.write_panel(bad, seed=11)  # repaired (the view stays damaged: it is rebuilt from the panel)
        assert main(args) == 0
        assert len(srv.requests) == 6 and sorted(verdicts(w)) == PAIR_IDS
    assert json.loads((w / "curate" / "summary.json").read_text())["rejected"] == 0


PAIR_IDS = sorted(f"grid00{g}_{r}_{t}" for g in range(3) for r, t in [(0, 1), (2, 3)])


def test_no_vlm_accepts_everything_as_skipped(pairs_workdir: Path) -> None:
    s = run_curate(CurateConfig(), pairs_workdir, vlm=None, progress=False)
    vs = verdicts(pairs_workdir)
    assert s.items_out == 6 and all(v["verdict"] == "skipped" and v["accepted"] for v in vs.values())
    assert vs["grid000_0_1"]["caption"].startswith("a blue teapot number 0")


def test_missing_pairs_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatagenInputError, match=r"pairs\.jsonl does not exist"):
        run_curate(CurateConfig(), tmp_path, progress=False)


def test_batch_api_submits_once_and_a_rerun_collects(pairs_workdir: Path, dg) -> None:
    w = pairs_workdir
    with FakeLLMServer(responder=dg.smart_responder(), batch_polls_before_done=3) as srv:
        vlm = dg.provider_cfg(srv, use_batch_api=True)
        cfg = CurateConfig(batch_size=4, batch_wait_s=0.0, batch_poll_s=0.01)
        s1 = run_curate(cfg, w, vlm=vlm, progress=False)
        batches = read_records(w / "curate" / "batches.jsonl")
        assert len(batches) == 2 and s1.extra["batches still running (rerun to collect)"] == 2
        assert verdicts(w) == {}
        n_lines = sum(r.api == "openai-batch" for r in srv.requests)
        assert n_lines == 6
        run_curate(dataclasses.replace(cfg, batch_wait_s=5.0), w, vlm=vlm, progress=False)
        assert sum(r.api == "openai-batch" for r in srv.requests) == n_lines  # collected, not resubmitted
        assert len(read_records(w / "curate" / "batches.jsonl")) == 2
        vs = verdicts(w)
        assert len(vs) == 6 and all(v["accepted"] for v in vs.values())


def _vlm_sets(srv) -> list[str]:
    sets = {"vlm.kind": "openai", "vlm.model": "test-model", "vlm.base_url": srv.openai_base_url,
            "vlm.max_retries": 0, "vlm.max_concurrency": 1}  # fmt: skip
    return [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]


def test_a_pair_that_raises_is_its_reject_and_the_stage_goes_on(pairs_workdir: Path, dg, monkeypatch) -> None:
    """Through the CLI: a pair record without its target (the view step raises KeyError), an answer whose
    parsing raises (the verdict step, made to raise for one pair), NaN and out-of-range confidences."""
    import json

    from datagen import curate
    from datagen.cli import main

    w = pairs_workdir
    pairs = [json.loads(line) for line in (w / "panels" / "pairs.jsonl").read_text().splitlines()]
    del pairs[1]["target_path"]  # grid000_2_3
    (w / "panels" / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    real = curate.verdict_record

    def verdict_record(pair, data, cfg, usage):
        if pair["id"] == "grid001_0_1":
            raise RuntimeError("parser bug")
        return real(pair, data, cfg, usage)

    monkeypatch.setattr(curate, "verdict_record", verdict_record)
    answers = iter([float("nan"), 0.9, 10**400])  # pairs asked in id order, one at a time; then 0.9

    def responder(req):
        return {**dg.smart_responder()(req), "confidence": next(answers, 0.9)}

    with FakeLLMServer(responder=responder) as srv:
        args = ["curate", "--workdir", str(w), "--no-progress", *_vlm_sets(srv)]
        assert main(args) == 0
        vs = verdicts(w)
        assert len(vs) == 6 and len(srv.requests) == 5  # the pair without a target was never asked
        view = vs["grid000_2_3"]
        assert not view["accepted"] and view["reject_reason"] == "view failed (KeyError)"
        assert view["reason"] == "view failed (KeyError): 'target_path'"
        assert vs["grid001_0_1"]["reject_reason"] == "verdict failed (RuntimeError)"
        malformed = sorted(v["reason"] for v in vs.values() if v["verdict"] == "error" and "finite" in v["reason"])
        assert len(malformed) == 2 and all(r.startswith("malformed answer: confidence") for r in malformed)
        summary = json.loads((w / "curate" / "summary.json").read_text())
        assert summary["items_out"] == 2 and summary["rejected"] == 4
        assert summary["reject_reasons"]["view failed (KeyError)"] == 1
        assert summary["reject_reasons"]["verdict failed (RuntimeError)"] == 1
        # a rerun asks nothing again and counts the same decisions
        assert main(args) == 0
        assert len(srv.requests) == 5
        assert json.loads((w / "curate" / "summary.json").read_text())["reject_reasons"] == summary["reject_reasons"]


def test_a_verdict_step_that_always_raises_stops_the_stage_and_records_nothing(tmp_path: Path, dg, monkeypatch) -> None:
    from datagen import curate

    w = tmp_path / "work"
    dg.make_pairs_workdir(w, n_grids=5)  # 10 pairs: more than ItemErrors' limit (8)
    real = curate.verdict_record
    panel = w / "panels" / "panels" / "grid000_1.png"
    good = panel.read_bytes()
    panel.write_bytes(b"")  # the first pair unreadable: a fault of its file, no sign that the stage works

    def broken(pair, data, cfg, usage):
        raise AttributeError("a bug every pair hits")

    with FakeLLMServer(responder=dg.smart_responder()) as srv:
        vlm = dg.provider_cfg(srv, max_concurrency=1)
        monkeypatch.setattr(curate, "verdict_record", broken)
        with pytest.raises(AttributeError, match="a bug every pair hits") as info:
            run_curate(CurateConfig(), w, vlm=vlm, progress=False)
        assert any("a fault of the stage" in note for note in info.value.__notes__)
        assert verdicts(w) == {}  # nothing recorded: the rerun after the fix decides every pair
        monkeypatch.setattr(curate, "verdict_record", real)
        panel.write_bytes(good)
        s = run_curate(CurateConfig(), w, vlm=vlm, progress=False)
    assert s.items_out == 10 and len(verdicts(w)) == 10
