"""Curation of tuples (issue 20): k references -> one target, from grids of three or more panels.

Every curated grid with n >= 3 panels holds (k references -> 1 target) examples for k = 2 ..
min(``dataset.max_references``, n - 1): each panel as the target, each k-subset of the others as its
references, at most ``curate.max_tuples_per_grid`` per grid and k (a seeded sample, sorted). A tuple
is accepted when all its k + 1 panels show one identity. Two ways to decide (``curate.tuple_verdicts``;
``vlm`` is the default, measured by ``benchmarks/datagen_tuples.py`` against the toy domain's truth):

* ``derived``: from the pair verdicts already in ``curate/verdicts.jsonl``: every pair of panels inside
  the tuple was judged (in either order) and every such verdict accepted; the caption is the target's
  from an accepted pair with that target. No request. A pair still undecided (its request failed and
  waits for a rerun) leaves the tuple undone too; a pair the panels stage never formed
  (``panels.max_pairs_per_grid``) makes it a reject with that reason.
* ``vlm``: one request per tuple with its k + 1 panels, asking whether all show one identity (the
  pair prompt's chain of thought, one description per image), through the same online loop, cache,
  refusal retries and failure rules as pairs (``datagen/curate.py``); the Batch API is not used for
  tuples. Without a ``vlm`` provider the tuples are derived (from the "skipped" pair verdicts).

Verdicts go to ``curate/tuples.<mode>.jsonl`` (dsd.manifest: kill -9 and a rerun finish the job; the
two modes keep separate logs, so switching modes never mixes them), the tuple summary to
``curate/tuples_summary.json``. One tuple whose step raises is that tuple's reject (summary.ItemErrors);
one with a panel that cannot be read is counted as a reject but left undone, so the rerun after the file
is repaired asks it (as its pairs), and a damaged upload view is rebuilt from its panel (datagen/vlm_view.py).
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

from dsd.io import atomic_write_json
from dsd.manifest import RecordLog, read_records

from .config import CurateConfig
from .curate import (
    CURATE_SYSTEM,
    _CurateRun,
    _pairs,
    _run_online,
    _todo,
    parse_confidence,
    prompt_index,
)
from .llm import stage_provider
from .summary import ItemErrors, StageSummary

TUPLE_SYSTEM = CURATE_SYSTEM.replace("two panels", "several panels").replace("whether both show", "whether all show")
TUPLE_PROMPT = (
    "Images 1 to {k} are references, image {n} is the target. Fill the fields in order, thinking step by step:\n"
    "1. subject: name the common object, character or scene present in the images.\n"
    "2. descriptions: describe that subject in each image, one entry per image in order, in detail "
    "(identity features).\n"
    "3. same_identity: true only if ALL {n} images show the identical subject; one different image makes it false.\n"
    "4. confidence: your confidence in that decision, from 0 to 1.\n"
    "5. reason: one sentence that concludes, naming any image that differs and how.\n"
    "6. caption: one sentence describing image {n} for training a text-to-image model: the subject and what this "
    "picture shows (pose, expression, setting, lighting). Do not mention images, panels or grids.\n"
    "For context, the grid was drawn from this prompt: {prompt}"
)
TUPLE_FIELDS = ("subject", "descriptions", "same_identity", "confidence", "reason", "caption")
TUPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "subject": {"type": "string"},
        "descriptions": {"type": "array", "items": {"type": "string"}},
        "same_identity": {"type": "boolean"},
        "confidence": {"type": "number"},
        "reason": {"type": "string"},
        "caption": {"type": "string"},
    },
    "required": list(TUPLE_FIELDS),
    "additionalProperties": False,
}
MODES = ("derived", "vlm")


def tuple_log_path(workdir: Path, mode: str) -> Path:
    return Path(workdir) / "curate" / f"tuples.{mode}.jsonl"


def tuple_id(grid_id: str, refs: tuple[int, ...], target: int) -> str:
    """``<grid>_<r1>-<r2>[-<r3>]_<target>``: pair ids are ``<grid>_<ref>_<target>``, never with a '-' there."""
    return f"{grid_id}_{'-'.join(str(r) for r in refs)}_{target}"


def grid_tuples(grid: dict[str, Any], max_references: int, per_grid: int) -> list[dict[str, Any]]:
    """The tuples of one cut grid (a ``panels/panels.jsonl`` record), k = 2 .. min(max_references, n - 1)."""
    gid, paths = str(grid["id"]), list(grid.get("panel_paths") or [])
    out = []
    for k in range(2, min(max_references, len(paths) - 1) + 1):
        options = [(refs, t) for t in range(len(paths))
                   for refs in itertools.combinations([i for i in range(len(paths)) if i != t], k)]  # fmt: skip
        if per_grid < len(options):
            options = sorted(random.Random(f"tuples|{gid}|{k}").sample(options, per_grid))
        out += [_item(gid, refs, t, paths) for refs, t in options]
    return out


def _item(gid: str, refs: tuple[int, ...] | list[int], target: int, paths: list[str]) -> dict[str, Any]:
    return {"id": tuple_id(gid, tuple(refs), target), "grid_id": gid, "k": len(refs), "ref_indices": list(refs),
            "target_index": target, "ref_paths": [paths[r] for r in refs], "target_path": paths[target]}  # fmt: skip


def tuple_item(verdict: dict[str, Any], paths: list[str]) -> dict[str, Any] | None:
    """The tuple a verdict record decided, with its panel paths (None when ``paths`` lacks one of its panels)."""
    panels = [*verdict["ref_indices"], verdict["target_index"]]
    if not all(isinstance(i, int) and 0 <= i < len(paths) for i in panels):
        return None
    return _item(str(verdict["grid_id"]), verdict["ref_indices"], verdict["target_index"], paths)


def candidate_tuples(workdir: Path, max_references: int, per_grid: int) -> list[dict[str, Any]]:
    grids = [g for g in read_records(Path(workdir) / "panels" / "panels.jsonl") if g.get("status") == "ok"]
    items = [t for g in sorted(grids, key=lambda g: str(g["id"])) for t in grid_tuples(g, max_references, per_grid)]
    return sorted(items, key=lambda t: t["id"])


def base_record(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": item["id"], "grid_id": item.get("grid_id"), "k": item.get("k"), "ref_indices": item.get("ref_indices"),
        "target_index": item.get("target_index"), "accepted": False, "verdict": "error", "subject": "",
        "descriptions": [], "same_identity": False, "confidence": 0.0, "reason": "", "caption": "", "usage": {},
    }  # fmt: skip


# ---------------------------------------------------------------- (a) derived from pair verdicts
class PairVerdicts:
    """The pair verdicts of a workdir by (grid, ref, target), and which pairs exist at all."""

    def __init__(self, workdir: Path, pairs: list[dict[str, Any]]) -> None:
        """``pairs``: the pairs curation judges (``curate.max_pairs`` applied)."""
        verdicts = {str(v["id"]): v for v in read_records(Path(workdir) / "curate" / "verdicts.jsonl")}
        self.exists: set[tuple[str, int, int]] = set()
        self.decided: dict[tuple[str, int, int], dict[str, Any]] = {}
        for p in pairs:
            key = (str(p["grid_id"]), int(p["ref_index"]), int(p["target_index"]))
            self.exists.add(key)
            if str(p["id"]) in verdicts:
                self.decided[key] = verdicts[str(p["id"])]

    def between(self, grid: str, a: int, b: int) -> tuple[list[dict[str, Any]], bool]:
        """(decided verdicts of the pair a-b in either order, whether one of its orders is still undecided)."""
        keys = [(grid, a, b), (grid, b, a)]
        pending = any(k in self.exists and k not in self.decided for k in keys)
        return [self.decided[k] for k in keys if k in self.decided], pending


def derived_record(item: dict[str, Any], pv: PairVerdicts) -> dict[str, Any] | None:
    """The tuple's verdict from its pairs'; None while one of them is undecided (the rerun derives it)."""
    rec = base_record(item)
    grid, panels, target = str(item["grid_id"]), [*item["ref_indices"], item["target_index"]], item["target_index"]
    used: list[dict[str, Any]] = []
    for a, b in itertools.combinations(panels, 2):
        found, pending = pv.between(grid, a, b)
        if pending:
            return None
        if not found:
            reason = f"no pair verdict for panels {a} and {b} (never judged: panels.max_pairs_per_grid, curate.max_pairs)"
            return {**rec, "verdict": "derived", "reason": reason, "reject_reason": "pair not judged"}
        bad = next((v for v in found if not v.get("accepted")), None)
        if bad is not None:
            why = bad.get("reject_reason") or bad.get("reason") or "rejected"
            return {**rec, "verdict": "derived", "reason": f"pair {bad['id']} rejected: {why}",
                    "reject_reason": "a pair inside the tuple rejected"}  # fmt: skip
        used += found
    captioned = [v for v in used if v.get("target_index") == target and str(v.get("caption", "")).strip()]
    if not captioned:
        return {**rec, "verdict": "derived", "reason": f"no accepted pair has panel {target} as its target (no caption)",
                "reject_reason": "no caption for the target"}  # fmt: skip
    first = min(captioned, key=lambda v: str(v["id"]))
    rec.update(accepted=True, verdict="derived", subject=str(first.get("subject", "")), same_identity=True,
               confidence=min(float(v.get("confidence") or 0.0) for v in used), caption=str(first["caption"]),
               reason=f"all {len(used)} pair verdicts inside the tuple accepted", pairs=sorted(str(v["id"]) for v in used))  # fmt: skip
    return rec


def _run_derived(run: _CurateRun, todo: list[dict[str, Any]], workdir: Path) -> None:
    pv = PairVerdicts(workdir, _pairs(workdir, run.cfg))
    for item in todo:
        try:
            rec = derived_record(item, pv)
        except Exception as exc:  # noqa: BLE001 - one tuple's failure is its reject, not the stage's end
            run.raised(item, "derive", exc)
            continue
        if rec is None:
            run.summary.add("tuples waiting for pair verdicts (rerun)")
            continue
        run.record(rec)


# ---------------------------------------------------------------- (b) one VLM request per tuple
def tuple_request(images: list[bytes], prompt: str):
    from dsd.providers import ChatRequest

    n = len(images)
    return ChatRequest(
        prompt=TUPLE_PROMPT.format(k=n - 1, n=n, prompt=prompt or "(unknown)"), system=TUPLE_SYSTEM,
        images=tuple(images), json_schema=TUPLE_SCHEMA, schema_name="tuple_verdict", temperature=0.0,
        max_output_tokens=400 + 250 * n,
    )  # fmt: skip


def tuple_verdict(item: dict[str, Any], data: Any, cfg: CurateConfig, usage: Any) -> dict[str, Any]:
    """The tuples log record for a structured answer (a reject with the reason when it is incomplete)."""
    rec = base_record(item)
    rec["usage"] = usage.to_dict() if hasattr(usage, "to_dict") else (usage or {})
    missing = [k for k in TUPLE_FIELDS if not isinstance(data, dict) or k not in data]
    if missing:
        return {**rec, "reason": f"malformed answer: missing {', '.join(missing)}"}
    confidence = parse_confidence(data["confidence"])
    if confidence is None:
        return {**rec, "reason": f"malformed answer: confidence {data['confidence']!r:.40} is not a finite number"}
    same = data["same_identity"] is True
    descriptions = data["descriptions"] if isinstance(data["descriptions"], list) else [data["descriptions"]]
    rec.update(subject=str(data["subject"]), descriptions=[str(d) for d in descriptions], reason=str(data["reason"]),
               caption=str(data["caption"]), same_identity=same, confidence=confidence, verdict="vlm")  # fmt: skip
    rec["accepted"] = same and confidence >= cfg.min_confidence and bool(rec["caption"].strip())
    if not rec["accepted"]:
        low = confidence < cfg.min_confidence
        rec["reject_reason"] = "different identity" if not same else "low confidence" if low else "empty caption"
    return rec


class TupleKind:
    """How ``datagen/curate.py``'s online loop asks about a tuple and records its answer."""

    def base(self, item: dict[str, Any]) -> dict[str, Any]:
        return base_record(item)

    def request(self, run: _CurateRun, item: dict[str, Any], panel):
        images = [panel(p) for p in [*item["ref_paths"], item["target_path"]]]
        return tuple_request(images, run.prompt_for(item).get("prompt", ""))

    def verdict(self, item: dict[str, Any], data: Any, cfg: CurateConfig, usage: Any) -> dict[str, Any]:
        return tuple_verdict(item, data, cfg, usage)


# ---------------------------------------------------------------- the stage part
def effective_mode(cfg: CurateConfig, vlm) -> str:
    """``curate.tuple_verdicts``, or "derived" without a vlm provider (which log the dataset reads)."""
    return cfg.tuple_verdicts if vlm is not None else "derived"


def run_tuples(cfg: CurateConfig, workdir: Path, vlm, max_references: int, pair_summary: StageSummary) -> StageSummary:
    """Decide every tuple of ``workdir`` not yet in its log (curate's second part, after the pairs)."""
    workdir = Path(workdir)
    mode = effective_mode(cfg, vlm)
    summary = StageSummary("curate tuples")
    summary.extra["tuple verdicts"] = mode if mode == cfg.tuple_verdicts else "derived (no vlm provider)"
    items = candidate_tuples(workdir, max_references, cfg.max_tuples_per_grid)
    out_dir = workdir / "curate"
    with RecordLog(tuple_log_path(workdir, mode), flush_every=64, flush_s=0.5) as log, ItemErrors(summary) as errors:
        run = _CurateRun(cfg, out_dir, prompt_index(workdir), workdir / "panels", log, summary, errors, kind=TupleKind())
        todo = _todo(run, items)
        if mode == "derived":
            _run_derived(run, todo, workdir)
        else:
            with stage_provider(vlm, out_dir / "vlm_cache", summary) as provider:
                run.provider = provider
                _run_online(run, todo)
    summary.stop()
    atomic_write_json(out_dir / "tuples_summary.json", summary.to_dict())
    pair_summary.extra.update({"tuple verdicts": summary.extra["tuple verdicts"],
                               "tuples accepted (k > 1)": summary.items_out, "tuples rejected (k > 1)": summary.rejected})  # fmt: skip
    if summary.usage is not None:
        u = summary.usage
        pair_summary.extra["tuple requests"] = f"{u.requests} ({u.cached} cached), ${u.cost_usd:.4f}"
    return summary


def read_tuple_verdicts(workdir: Path, mode: str) -> list[dict[str, Any]]:
    path = tuple_log_path(workdir, mode)
    return read_records(path) if path.is_file() else []


__all__ = ["MODES", "TUPLE_SCHEMA", "candidate_tuples", "derived_record", "grid_tuples", "run_tuples", "tuple_id"]
