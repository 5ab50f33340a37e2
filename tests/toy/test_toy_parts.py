"""Issue 19's toy parts on their own: the toy VAE reconstructs, the teacher draws what the template
prompt asks (and its inconsistent share), the toy judge knows its answers through the real provider code."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from datagen.config import PromptsConfig
from datagen.prompts import template_prompt
from datagen.teacher import toy_domain as dom
from datagen.teacher.config import TeacherConfig
from datagen.teacher.toy import INCONSISTENT_SHARE, draw_grid, grid_plan
from tests.support.toy_judge import toy_responder
from tests.support.toy_vision import context_score, identity_score, read_picture, reading_of

RED_STRIPES = dom.Identity("circle", "red", "blue", "stripes")


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_vision_reads_the_drawings() -> None:
    rng = np.random.default_rng(0)
    ids, ctxs = dom.all_identities(), dom.all_contexts()
    cp, pf = [], []
    for _ in range(40):
        identity, ctx = ids[rng.integers(len(ids))], ctxs[rng.integers(len(ctxs))]
        reading = read_picture(dom.draw_panel(identity, ctx))
        cp.append(identity_score(reading_of(identity, ctx), reading))
        pf.append(context_score(reading, ctx))
    assert np.mean(cp) >= 0.9 and np.mean(pf) >= 0.9


def test_template_prompt_drives_the_teacher() -> None:
    cfg = PromptsConfig(mode="template", layouts=("2x2",), seed=0)
    rec = template_prompt({"id": "c0", "caption": RED_STRIPES.text}, cfg)
    plan = grid_plan(rec["prompt"], seed=3)
    assert (plan.rows, plan.cols) == (2, 2)
    assert plan.contexts == tuple(dom.parse_context(line) for line in rec["panels"])
    grid = draw_grid(plan, 288, 288, seed=3)
    for k, (identity, ctx) in enumerate(zip(plan.identities, plan.contexts, strict=True)):
        r, c = divmod(k, 2)
        panel = grid.crop((8 + c * 144, 8 + r * 144, 8 + c * 144 + 128, 8 + r * 144 + 128))
        assert identity_score(reading_of(identity, ctx), read_picture(panel)) >= 0.75


def test_grid_placement_keeps_the_first_panels_placement() -> None:
    """``teacher.toy_placement = "grid"``: every panel at the first panel's position and size, each on the
    background its own line asks; the identities and the odd panel are the same draws as "panel"'s."""
    cfg = PromptsConfig(mode="template", layouts=("2x2",), seed=0)
    rec = template_prompt({"id": "c0", "caption": RED_STRIPES.text}, cfg)
    asked = [dom.parse_context(line) for line in rec["panels"]]
    assert len({(c.position, c.size) for c in asked}) > 1, "the template should ask for several placements"
    for seed in range(20):
        grid, panel = grid_plan(rec["prompt"], seed, "grid"), grid_plan(rec["prompt"], seed)
        assert (grid.identities, grid.odd_panel) == (panel.identities, panel.odd_panel)
        assert {(c.position, c.size) for c in grid.contexts} == {(asked[0].position, asked[0].size)}
        assert [c.background for c in grid.contexts] == [c.background for c in asked]


def test_jitter_moves_each_panels_object_within_its_bound() -> None:
    """``teacher.toy_jitter``: 0 draws every panel exactly as ``draw_panel`` at its context; the default moves
    the objects of a grid-placement grid apart by a few pixels, never more than the bound allows."""
    cfg = PromptsConfig(mode="template", layouts=("2x2",), seed=0)
    plan = grid_plan(template_prompt({"id": "c0", "caption": RED_STRIPES.text}, cfg)["prompt"], 3, "grid")

    def panels(jitter: float) -> list[np.ndarray]:
        grid = draw_grid(plan, 288, 288, seed=3, jitter=jitter)
        return [np.asarray(grid.crop((8 + c * 144, 8 + r * 144, 136 + c * 144, 136 + r * 144))) for r in (0, 1) for c in (0, 1)]

    def box(panel: np.ndarray, ctx: dom.Context) -> tuple[int, int]:
        ys, xs = np.nonzero(np.abs(panel.astype(int) - dom.BACKGROUNDS[ctx.background]).sum(-1) > 0)
        return int(ys.min()), int(xs.min())

    exact = [np.asarray(dom.draw_panel(i, c)) for i, c in zip(plan.identities, plan.contexts, strict=True)]
    assert all(np.array_equal(a, b) for a, b in zip(panels(0.0), exact, strict=True))
    moved = [box(p, c) for p, c in zip(panels(0.03), plan.contexts, strict=True)]
    still = [box(p, c) for p, c in zip(exact, plan.contexts, strict=True)]
    shifts = [max(abs(a - b) for a, b in zip(m, s, strict=True)) for m, s in zip(moved, still, strict=True)]
    assert max(shifts) > 0 and max(shifts) <= round(0.03 * 128) + 1
    with pytest.raises(ValueError, match="toy_jitter"):
        TeacherConfig(backend="toy", toy_jitter=0.5)


def test_teacher_inconsistent_share() -> None:
    prompt = f"a grid of 4 images representing the same object: {RED_STRIPES.text}. top-left: front view; " \
             "top-right: side view; bottom-left: top-down view; bottom-right: held in a hand."  # fmt: skip
    odd = [grid_plan(prompt, seed).odd_panel is not None for seed in range(400)]
    assert abs(np.mean(odd) - INCONSISTENT_SHARE) < 0.06


def test_teacher_refuses_a_non_toy_prompt() -> None:
    with pytest.raises(ValueError, match="toy subjects"):
        grid_plan("a grid of 4 images representing the same character: an old fisherman. top-left: smiling", 0)


def test_judge_known_answers_through_the_openai_client() -> None:
    from datagen.curate import curate_request
    from dsd.eval.judge import CP_PROMPT, CP_SCHEMA, CP_SYSTEM
    from dsd.providers import ChatRequest, ProviderConfig, make_provider
    from tests.support.llm_server import FakeLLMServer

    ref = dom.draw_panel(RED_STRIPES, dom.Context("center", "large", "grey"))
    same = dom.draw_panel(RED_STRIPES, dom.Context("left", "small", "mint"))
    other = dom.draw_panel(dom.Identity("triangle", "green", "yellow", "dot"), dom.Context("left", "small", "mint"))
    blank = Image.new("RGB", (128, 128), dom.BACKGROUNDS["grey"])
    with FakeLLMServer(responder=toy_responder) as srv:
        provider = make_provider(ProviderConfig(kind="openai", model="toy", base_url=srv.openai_base_url), api_key="toy")

        def ask(request):
            return provider.complete(request).data

        verdict = ask(curate_request(_png(ref), _png(same), "a prompt"))
        assert verdict["same_identity"] is True and verdict["caption"] == "an object, three-quarter view, in a forest"
        assert ask(curate_request(_png(ref), _png(other), "a prompt"))["same_identity"] is False
        assert ask(curate_request(_png(ref), _png(blank), "a prompt"))["same_identity"] is False

        def cp(out: Image.Image) -> int:
            req = ChatRequest(prompt=CP_PROMPT.format(debias="", run=""), system=CP_SYSTEM, images=(_png(ref), _png(out)),
                              json_schema=CP_SCHEMA, schema_name="cp", temperature=0.0)  # fmt: skip
            return ask(req)["score"]

        assert (cp(same), cp(other), cp(blank)) == (4, 0, 0)


def test_attribute_shares_split_cp_into_the_four_attributes(tmp_path) -> None:
    """A sample whose target frame shows the reference's identity counts on every attribute; one with another
    body colour on all but the body (the canvas's first frame, a reconstruction, is not read)."""
    import pandas as pd

    from tests.support.toy_judge import attribute_shares

    ident = dom.Identity("triangle", "green", "pink", "dot")
    other = dom.Identity("triangle", "blue", "pink", "dot")
    dom.draw_panel(ident, dom.Context("center", "large", "grey")).save(tmp_path / "ref.png")
    rows = []
    for name, shown in (("same", ident), ("body", other)):
        canvas = Image.new("RGB", (256, 128))
        canvas.paste(dom.draw_panel(other, dom.Context()), (0, 0))
        canvas.paste(dom.draw_panel(shown, dom.Context("center", "large", "sand")), (128, 0))
        canvas.save(tmp_path / f"{name}.png")
        rows.append({"system": name, "path": str(tmp_path / f"{name}.png"), "reference": str(tmp_path / "ref.png")})
    shares = attribute_shares(pd.DataFrame(rows))
    assert shares["same"] == {"shape": 1.0, "body": 1.0, "accent": 1.0, "pattern": 1.0}
    assert shares["body"] == {"shape": 1.0, "body": 0.0, "accent": 1.0, "pattern": 1.0}
