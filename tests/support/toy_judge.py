"""The toy judge (issue 19): answers curation's and ``dsd eval``'s VLM questions from the pictures.

A responder for :class:`tests.support.llm_server.FakeLLMServer` (the OpenAI/Gemini protocol server), so
curation and eval reach it through their real provider code. It recognises the question by the JSON
schema it asks for and reads the pictures with :mod:`tests.support.toy_vision`:

* curation (``same_identity``): A and B show the same identity when shape, both colours and pattern
  agree (those both views show: issue 20's sides); the caption names B's context in the template
  vocabulary ("an object, side view, in a forest"), and its view when it shows one side only;
* CP (``reference_features``): the 0-4 score is 4 x the share of identity attributes kept;
* PF (``prompt_elements``): 4 x the share of the asked context (position, size, background) shown.

Deterministic: the same pictures always get the same answer.

With ``--whole-targets`` (issue 20's sides) curation also rejects a pair or tuple whose *target* (the last
picture) shows one side only: the eval asks for the whole object, so the training targets do too, while the
references stay whatever view they show.

    python -m tests.support.toy_judge [--whole-targets]   # serve on a free port, print its OpenAI base URL
"""

from __future__ import annotations

import argparse
import functools
import io
import itertools
import re
import sys

from PIL import Image

from datagen.teacher import toy_domain as dom

from .toy_vision import Reading, context_score, identity_score, read_picture, same_identity

CAPTION_PREFIX = "an object, "
_PF_PROMPT = re.compile(r"generated from this prompt:\n(?P<prompt>.*?)\n", re.S)


def _picture(data: bytes) -> Reading:
    with Image.open(io.BytesIO(data)) as im:
        return read_picture(im)


def describe(r: Reading) -> str:
    if not r.found:
        return f"no object on a {r.background} background"
    where = f"{r.size}, at the {r.position}, on {r.background}"
    if r.view == "plain":
        return f"the plain side of a {r.body} {r.shape}, {where}"
    if r.view == "patterned":
        return f"the patterned side of a {r.shape}: {r.accent} {r.pattern} on ivory, {where}"
    return f"{dom.Identity(r.shape, r.body, r.accent, r.pattern).text}, {where}"


def caption_for(r: Reading) -> str:
    """The training caption of a panel: its context (and a side's view) only, so identity has to come from the
    references."""
    line = dom.context_line(dom.Context(r.position or "center", r.size or "large", r.background or "grey"))
    return CAPTION_PREFIX + line + (f", {dom.VIEW_WORDS[r.view]}" if r.view in dom.VIEW_WORDS else "")


SIDE_TARGET = "the target shows one side only"


def _whole_target(same: bool, reason: str, target: Reading, whole_targets: bool) -> tuple[bool, str]:
    """``--whole-targets``: a verdict of one identity becomes a reject when its target shows one side only."""
    if same and whole_targets and target.view != "whole":
        return False, SIDE_TARGET
    return same, reason


def curate_answer(a: Reading, b: Reading, whole_targets: bool = False) -> dict:
    same = same_identity(a, b)
    differences = [k for k in ("shape", "body", "accent", "pattern") if getattr(a, k) != getattr(b, k)]
    reason = "every identity feature agrees" if same else f"they differ in {', '.join(differences) or 'presence'}"
    same, reason = _whole_target(same, reason, b, whole_targets)
    return {
        "subject": "a flat shape" if a.found else "nothing",
        "description_a": describe(a),
        "description_b": describe(b),
        "same_identity": bool(same),
        "confidence": 0.95,
        "reason": reason,
        "caption": caption_for(b),
    }


def tuple_answer(pictures: list[Reading], whole_targets: bool = False) -> dict:
    """Issue 20's tuple question: do all k + 1 pictures show one identity? The caption is the last one's."""
    same = all(same_identity(a, b) for a, b in itertools.combinations(pictures, 2))
    odd = [i + 1 for i, p in enumerate(pictures) if not all(same_identity(p, q) for q in pictures if q is not p)]
    reason = "every identity feature agrees" if same else f"image(s) {odd} differ from image 1"
    same, reason = _whole_target(same, reason, pictures[-1], whole_targets)
    return {"subject": "a flat shape", "descriptions": [describe(p) for p in pictures], "same_identity": bool(same),
            "confidence": 0.95, "reason": reason, "caption": caption_for(pictures[-1])}  # fmt: skip


def cp_answer(ref: Reading, out: Reading) -> dict:
    score = identity_score(ref, out)
    return {
        "subject": describe(ref), "reference_features": describe(ref), "generated_features": describe(out),
        "differences": "none" if score == 1.0 else "identity attributes differ", "score": int(round(4 * score)),
    }  # fmt: skip


def pf_answer(out: Reading, prompt: str) -> dict:
    asked = dom.parse_context(prompt)
    score = context_score(out, asked)
    return {
        "prompt_elements": f"{asked.size} object at the {asked.position} on {asked.background}",
        "image_content": describe(out), "missing_or_wrong": "none" if score == 1.0 else "some", "score": int(round(4 * score)),
    }  # fmt: skip


def toy_responder(request, whole_targets: bool = False) -> dict | str:
    """The FakeLLMServer responder: curation verdicts, CP and PF scores from the pictures."""
    props = (request.json_schema or {}).get("properties", {})
    pictures = [_picture(b) for b in request.images]
    if "same_identity" in props and len(pictures) == 2:
        return curate_answer(*pictures, whole_targets=whole_targets)
    if "same_identity" in props and len(pictures) > 2:  # a tuple (issue 20)
        return tuple_answer(pictures, whole_targets=whole_targets)
    if "reference_features" in props and len(pictures) == 2:
        return cp_answer(*pictures)
    if "prompt_elements" in props and len(pictures) == 1:
        m = _PF_PROMPT.search(request.prompt)
        return pf_answer(pictures[0], m["prompt"] if m else request.prompt)
    return ("refusal",)  # a question the toy judge cannot answer


def main() -> None:
    import threading

    from .llm_server import FakeLLMServer

    p = argparse.ArgumentParser(prog="python -m tests.support.toy_judge", description=__doc__.split("\n\n")[0])
    p.add_argument("--whole-targets", action="store_true", help="curation rejects targets that show one side only")
    p.add_argument("--until-stdin-closes", action="store_true",
                   help="exit when stdin reaches its end: a caller that holds the pipe and is killed takes the judge with it")
    args = p.parse_args()
    server = FakeLLMServer(responder=functools.partial(toy_responder, whole_targets=args.whole_targets)).start()
    print(server.openai_base_url, flush=True)  # noqa: T201 - the one line a caller reads
    if args.until_stdin_closes:
        sys.stdin.read()  # returns once every writer of the pipe is gone, however the caller ended
        server.stop()
        return
    threading.Event().wait()


if __name__ == "__main__":
    main()


def curation_scores(workdir) -> dict[str, float]:
    """How curation did on a toy datagen workdir, against the teacher's own plan of every grid: precision
    and recall of the accepted pairs (a pair is consistent when neither panel is the grid's odd one). Pairs
    rejected by ``--whole-targets`` only (reason ``SIDE_TARGET``) are counted apart, as ``side_targets``."""
    from pathlib import Path

    from datagen.teacher.toy import grid_plan
    from dsd.manifest import read_records

    root = Path(workdir)
    odd = {str(g["id"]): grid_plan(g["prompt"], int(g["seed"])).odd_panel for g in read_records(root / "teacher" / "grids.jsonl")}
    tp = fp = fn = tn = side = 0
    for v in read_records(root / "curate" / "verdicts.jsonl"):
        if v.get("reason") == SIDE_TARGET:
            side += 1
            continue
        consistent = odd[str(v["grid_id"])] not in (v["ref_index"], v["target_index"])
        accepted = bool(v.get("accepted"))
        tp, fp = tp + (accepted and consistent), fp + (accepted and not consistent)
        fn, tn = fn + (not accepted and consistent), tn + (not accepted and not consistent)
    return {"pairs": tp + fp + fn + tn, "inconsistent_pairs": fp + tn, "rejected_inconsistent": tn,
            "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
            "inconsistent_grids": sum(o is not None for o in odd.values()), "grids": len(odd), "side_targets": side}  # fmt: skip


IDENTITY_ATTRIBUTES = ("shape", "body", "accent", "pattern")


def attribute_shares(scores) -> dict[str, dict[str, float]]:
    """system -> attribute -> share of its samples whose target frame shows the reference's attribute: what
    CP's four quarters are made of (``scores``: ``dsd eval``'s scores table; frames are square, the target last)."""
    shares: dict[str, dict[str, float]] = {}
    for system, rows in scores.groupby("system"):
        hits = dict.fromkeys(IDENTITY_ATTRIBUTES, 0)
        for path, reference in zip(rows.path, rows.reference, strict=True):
            with Image.open(path) as im:
                side = im.height
                out = read_picture(im.crop((im.width - side, 0, im.width, side)))
            with Image.open(reference) as im:
                ref = read_picture(im)
            for k in IDENTITY_ATTRIBUTES:
                hits[k] += bool(out.found and ref.found and getattr(out, k) == getattr(ref, k))
        shares[str(system)] = {k: v / max(len(rows), 1) for k, v in hits.items()}
    return shares
