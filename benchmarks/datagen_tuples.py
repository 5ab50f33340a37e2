"""Issue 20: which tuple verdicts agree better with the truth, derived from pair verdicts or one VLM request per tuple?

    python -m benchmarks.datagen_tuples --out DIR [--identities 60] [--layouts 2x2,1x3,3x3]

The toy domain (issue 19) knows the truth: the toy teacher's plan of every grid names the panel that shows
another identity (``datagen.teacher.toy.grid_plan``), so a tuple is consistent when that panel is not in it.
One datagen run (the shipped stages, the toy judge answering over the OpenAI protocol) with
``dataset.max_references = 3`` decides every tuple the derived way; the curate stage is then run again with
``curate.tuple_verdicts = "vlm"`` on the same workdir (its own log). For each way: precision, recall and
accuracy of the accepted tuples against the truth, per k, and the VLM requests each way cost.

The toy judge reads toy pictures without error, so both ways are exact there. ``--noise P`` models a fallible
VLM: every identity answer (pair or tuple alike) is flipped with probability P, seeded by the request's
images, so one question has the same error rate either way and what differs is how the errors compose.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LAYOUTS = "2x2,1x3,3x3"


def tuple_scores(workdir: Path, mode: str) -> dict[str, dict[str, float]]:
    """{"all" | "k=2" | "k=3": {tuples, consistent, precision, recall, accuracy}} of ``curate/tuples.<mode>.jsonl``."""
    from datagen.teacher.toy import grid_plan
    from datagen.tuples import read_tuple_verdicts
    from dsd.manifest import read_records

    grids = read_records(Path(workdir) / "teacher" / "grids.jsonl")
    odd = {str(g["id"]): grid_plan(g["prompt"], int(g["seed"])).odd_panel for g in grids}
    counts: dict[str, list[int]] = {}
    for v in read_tuple_verdicts(workdir, mode):
        consistent = odd[str(v["grid_id"])] not in [*v["ref_indices"], v["target_index"]]
        cell = 2 * (not bool(v.get("accepted"))) + (not consistent)  # tp, fp, fn, tn
        for group in ("all", f"k={v['k']}"):
            counts.setdefault(group, [0, 0, 0, 0])[cell] += 1
    return {group: _rates(*c) for group, c in sorted(counts.items())}


def _rates(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    n = tp + fp + fn + tn
    return {"tuples": n, "consistent": tp + fn, "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
            "accuracy": (tp + tn) / max(n, 1)}  # fmt: skip


def toy_config(out: Path, identities: int, judge_url: str, layouts: str) -> Path:
    """The toy loop's datagen config with several layouts and tuples up to k = 3."""
    from benchmarks.toy_loop import write_datagen_config

    return write_datagen_config(out, identities, judge_url, layouts=tuple(layouts.split(",")), max_references=3,
                                max_pairs_per_grid=72)


def noisy(responder, p: float):
    """``responder`` whose "same_identity" answers are flipped with probability ``p`` (seeded by the images)."""
    import hashlib
    import random

    def respond(request):
        answer = responder(request)
        seed = hashlib.sha1(b"".join(request.images)).hexdigest()
        if isinstance(answer, dict) and "same_identity" in answer and random.Random(seed).random() < p:
            answer = {**answer, "same_identity": not answer["same_identity"]}
        return answer

    return respond


def run(out: Path, identities: int, layouts: str, noise: float = 0.0) -> dict:
    import os

    from benchmarks.toy_loop import KEY_ENV
    from datagen.cli import main as datagen_main
    from tests.support.llm_server import FakeLLMServer
    from tests.support.toy_judge import toy_responder

    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault(KEY_ENV, "toy")
    work = out / "datagen"
    with FakeLLMServer(responder=noisy(toy_responder, noise)) as srv:
        cfg = toy_config(out, identities, srv.openai_base_url, layouts)
        flags = ["--config", str(cfg), "--workdir", str(work), "--no-progress", "-q"]
        assert datagen_main(["run", *flags]) == 0
        pair_requests = len(srv.requests)
        assert datagen_main(["curate", *flags, "--set", "curate.tuple_verdicts=vlm"]) == 0
        tuple_requests = len(srv.requests) - pair_requests
    return {"derived": {"requests": 0, **tuple_scores(work, "derived")}, "noise": noise,
            "vlm": {"requests": tuple_requests, **tuple_scores(work, "vlm")}, "pair_requests": pair_requests}


def table(result: dict) -> str:
    lines = ["| tuple verdicts | group | tuples | consistent | precision | recall | accuracy | VLM requests |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for mode in ("derived", "vlm"):
        for group, r in result[mode].items():
            if group == "requests":
                continue
            lines.append(f"| {mode} | {group} | {r['tuples']} | {r['consistent']} | {r['precision']:.3f} | "
                         f"{r['recall']:.3f} | {r['accuracy']:.3f} | {result[mode]['requests'] if group == 'all' else ''} |")  # fmt: skip
    return "\n".join(lines) + (f"\n\njudge noise {result['noise']:.2f}; pair verdicts (both ways start from them): "
                               f"{result['pair_requests']} requests\n")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.datagen_tuples", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--identities", type=int, default=60, help="toy identities (one grid each, of a random layout)")
    p.add_argument("--layouts", default=LAYOUTS)
    p.add_argument("--noise", type=float, default=0.0, help="flip each identity answer with this probability")
    args = p.parse_args(argv)
    result = run(args.out.resolve(), args.identities, args.layouts, args.noise)
    text = table(result)
    (args.out / "tuples_agreement.md").write_text(text)
    (args.out / "tuples_agreement.json").write_text(json.dumps(result, indent=1))
    print(text)  # noqa: T201 - the benchmark's report
    return 0


if __name__ == "__main__":
    sys.exit(main())
