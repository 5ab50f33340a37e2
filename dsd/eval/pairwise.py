"""Pairwise A/B judging (``dsd eval --pairwise``): which of two systems keeps the identity better, and
which follows the prompt better, image against image.

Per-image 0-4 scores from a VLM are noisy and bunch up at 3; a forced choice between two outputs of the
same prompt is the easier question and ranks systems closer to people. For every benchmark item (subject,
prompt, seed) that two systems both drew, the judge sees the reference, the prompt and both outputs, and
answers ``A``, ``B`` or ``tie`` for identity and for prompt following, each after its reasoning (schema
order). Each pair is asked in both orders, so a judge that prefers the first (or second) image cancels
out, and the rate at which the answer follows the position instead of the picture is measured.

One record per (pair of systems, item) in ``scores/pairwise.jsonl`` (dsd.manifest: ``kill -9`` loses at
most the items in flight, a rerun asks only the rest), answers in the provider's content-hash cache.
Aggregation (:func:`summarise`): Bradley-Terry strengths per criterion with bootstrap intervals over
subjects (dsd/eval/stats.py), the win matrix, the ranking, the position-bias rate, agreement with the
pointwise scores and the judge's cost.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import RecordLog, read_records
from ..providers import (
    ChatRequest,
    ChatResult,
    ProviderAuthError,
    ProviderRefusal,
    ProviderResponseError,
    Usage,
)
from . import stats
from .judge import Judge, JudgeConfigError, JudgeUnavailable, _first_line

logger = logging.getLogger(__name__)

PAIR_LOG = "pairwise.jsonl"
CRITERIA = ("identity", "prompt")
POINTWISE = {"identity": ("cp", "dino", "clip_i"), "prompt": ("pf", "clip_t")}
CHOICES = ["A", "B", "tie"]
ORDERS = ("ab", "ba")

PAIR_SYSTEM = (
    "You are a strict, consistent judge of personalised image generation. You compare two generated images, "
    "A and B, made from the same reference subject and the same prompt."
)
PAIR_PROMPT = (
    "The first image is the reference subject. The second image is A, the third is B; both were generated "
    "from this prompt:\n{prompt}\nFill the fields in order:\n"
    "1. identity_reasoning: compare how well A and B keep the identity of the reference subject (shape, "
    "proportions, colours, markings, materials, face, text; for a style its palette and strokes). Pose, "
    "viewpoint, expression, lighting and setting may change freely.\n"
    "2. identity: the image that keeps the identity better: \"A\", \"B\", or \"tie\" if you cannot tell them apart "
    "on this.\n"
    "3. prompt_reasoning: compare how completely A and B follow the prompt (subject, action, setting, style, "
    "attributes, counts), without regard to the reference.\n"
    "4. prompt: the image that follows the prompt better: \"A\", \"B\" or \"tie\"."
)
PAIR_SCHEMA = {
    "type": "object",
    "properties": {
        "identity_reasoning": {"type": "string"}, "identity": {"type": "string", "enum": CHOICES},
        "prompt_reasoning": {"type": "string"}, "prompt": {"type": "string", "enum": CHOICES},
    },
    "required": ["identity_reasoning", "identity", "prompt_reasoning", "prompt"],
    "additionalProperties": False,
}  # fmt: skip


@dataclass
class PairResult:
    """The answers of both orders: per order and criterion ``A`` (first shown), ``B``, ``tie`` or None (failed)."""

    answers: dict[str, dict[str, str | None]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)


class PairJudge(Judge):
    """``PairJudge(provider).score_many([(reference, (output_a, output_b), prompt), ...])`` -> PairResult."""

    def requests(self, reference, output, prompt: str) -> list[tuple[str, ChatRequest]]:  # type: ignore[override]
        ref = self.encode(reference)
        first, second = (self.encode(o) for o in output)
        reqs = []
        for order, images in (("ab", (ref, first, second)), ("ba", (ref, second, first))):
            reqs.append((order, ChatRequest(
                prompt=PAIR_PROMPT.format(prompt=prompt), system=PAIR_SYSTEM, images=images, json_schema=PAIR_SCHEMA,
                schema_name="pairwise_judgement", temperature=self.temperature, max_output_tokens=self.max_output_tokens,
            )))  # fmt: skip
        return reqs

    def combine(self, answers: Sequence[tuple[str, ChatResult | BaseException]]) -> PairResult:  # type: ignore[override]
        result = PairResult()
        for order, answer in answers:
            if isinstance(answer, ProviderAuthError):
                raise JudgeConfigError(f"VLM judge: {answer}") from answer
            if isinstance(answer, ProviderRefusal | ProviderResponseError):
                kind = "refused" if isinstance(answer, ProviderRefusal) else "malformed answer"
                result.failures.append(f"{order}: {kind}: {_first_line(answer)}")
                result.answers[order] = {c: None for c in CRITERIA}
            elif isinstance(answer, BaseException):
                raise JudgeUnavailable(f"VLM judge: {_first_line(answer)}") from answer
            else:
                result.usage.add(answer.usage)
                result.answers[order] = {c: str((answer.data or {})[c]) for c in CRITERIA}
        return result


# -- the stage ----------------------------------------------------------------------------------------
def _item_key(row: dict[str, Any]) -> str:
    return f"{row['subject']}/{row['prompt_id']}/{row['sample']}"


def pair_items(rows: list[dict[str, Any]], systems: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per (pair of systems, item both drew), pairs in name order: ``id``, ``a``, ``b``, rows."""
    by_system: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_system.setdefault(row["system"], {})[_item_key(row)] = row
    out = []
    for a, b in itertools.combinations(sorted(systems), 2):
        for key in sorted(set(by_system.get(a, {})) & set(by_system.get(b, {}))):
            ra, rb = by_system[a][key], by_system[b][key]
            out.append({"id": f"{a}~{b}/{key}", "a": a, "b": b, "subject": ra["subject"], "prompt_id": ra["prompt_id"],
                        "sample": ra["sample"], "row_a": ra, "row_b": rb})  # fmt: skip
    return out


@dataclass
class PairStageResult:
    judged: int = 0
    unavailable: int = 0
    failures: int = 0
    items: int = 0


def pairwise_stage(rows, bench, judge: PairJudge, scores_dir: Path, *, progress: bool = True) -> PairStageResult:
    """Ask the judge about every (pair, item) not yet in ``pairwise.jsonl``."""
    from tqdm import tqdm

    from .stages import _judge_input

    texts = {p.key: p.text for p in bench.prompts}
    pairs = pair_items(rows, sorted({r["system"] for r in rows}))
    result = PairStageResult(items=len(pairs))
    with RecordLog(Path(scores_dir) / PAIR_LOG, flush_every=16, flush_s=0.5) as log:
        todo = [p for p in pairs if p["id"] not in log]
        items = [(str(bench.subjects[p["subject"]].reference), (_judge_input(p["row_a"]), _judge_input(p["row_b"])),
                  texts[f"{p['subject']}/{p['prompt_id']}"]) for p in todo]  # fmt: skip
        bar = tqdm(total=len(todo), desc="pairwise judge", unit="pair", disable=not progress)
        for index, got in judge.score_many(items):
            bar.update(1)
            pair = todo[index]
            if isinstance(got, JudgeUnavailable):
                result.unavailable += 1
                logger.warning("pairwise judge: %s left for the next run: %s", pair["id"], got)
                continue
            result.judged += 1
            result.failures += bool(got.failures)
            log.append({"id": pair["id"], "a": pair["a"], "b": pair["b"], "subject": pair["subject"],
                        "prompt_id": pair["prompt_id"], "sample": pair["sample"], "answers": got.answers,
                        "failures": got.failures, "usage": got.usage.to_dict()})  # fmt: skip
        bar.close()
    return result


def read_pairwise(scores_dir: Path, systems: Sequence[str]) -> list[dict[str, Any]]:
    """The finished records of the given systems, sorted by id (what a rerun would also see)."""
    keep = set(systems)
    recs = [r for r in read_records(Path(scores_dir) / PAIR_LOG) if r["a"] in keep and r["b"] in keep]
    return sorted(recs, key=lambda r: str(r["id"]))


# -- aggregation --------------------------------------------------------------------------------------
def _winner(answer: str | None, order: str, a: str, b: str) -> str | None:
    """The system an answer names (``tie`` stays), from the order it was shown in."""
    if answer is None:
        return None
    if answer == "tie":
        return "tie"
    first, second = (a, b) if order == "ab" else (b, a)
    return first if answer == "A" else second


def _outcomes(rec: dict[str, Any], criterion: str) -> list[str]:
    got = [_winner((rec["answers"].get(o) or {}).get(criterion), o, rec["a"], rec["b"]) for o in ORDERS]
    return [g for g in got if g is not None]


def _pointwise_sign(table, rec: dict[str, Any], metric: str) -> float:
    key = (rec["subject"], rec["prompt_id"], rec["sample"])
    values = [table.get((system, *key), {}).get(metric) for system in (rec["a"], rec["b"])]
    if any(v is None or not np.isfinite(v) for v in values):
        return np.nan
    return float(np.sign(values[0] - values[1]))


@dataclass
class CriterionSummary:
    criterion: str
    systems: list[str]
    strength: list[float]
    lo: list[float]
    hi: list[float]
    win_rate: list[list[float | None]]  # [i][j]: share of i's games against j that i won (ties half)
    games: int
    ties: int
    position_bias: float | None  # share of both-order items whose answer followed the position, not the image
    first_shown_wins: float | None  # share of decisive answers that picked the image shown first
    pointwise_metric: str | None
    agreement: float | None  # share of decisive items where pairwise and pointwise pick the same system
    agreement_items: int = 0
    rank_agreement: float | None = None  # Kendall's tau between the Bradley-Terry and the pointwise-mean orders

    @property
    def ranking(self) -> list[str]:
        return [s for _, s in sorted(zip(self.strength, self.systems, strict=True), key=lambda t: -t[0])]


def summarise(records: list[dict[str, Any]], systems: Sequence[str], frame=None) -> dict[str, Any]:
    """Per criterion a :class:`CriterionSummary`; plus ``requests`` and ``usage`` of the pairwise judge."""
    systems = sorted(systems)
    table = {}
    if frame is not None and len(frame):
        for row in frame.to_dict("records"):
            table[(row["system"], row["subject"], row["prompt_id"], row["sample"] or "")] = row
    out: dict[str, Any] = {"criteria": {c: _criterion(records, systems, table, c) for c in CRITERIA}}
    usage = Usage()
    for rec in records:
        usage.add(Usage(**rec.get("usage", {})))
    out["usage"] = usage.to_dict()
    out["records"] = len(records)
    return out


def _criterion(records, systems: list[str], table, criterion: str) -> CriterionSummary:
    index = {s: k for k, s in enumerate(systems)}
    subjects = sorted({r["subject"] for r in records})
    wins = np.zeros((max(1, len(subjects)), len(systems), len(systems)))
    unit = {s: k for k, s in enumerate(subjects)}
    games = ties = both = biased = first_wins = decisive = agree = compared = 0
    metric = next((m for m in POINTWISE[criterion] if any(m in row and row[m] == row[m] for row in table.values())), None)
    for rec in records:
        a, b = index[rec["a"]], index[rec["b"]]
        u = unit[rec["subject"]]
        outcomes = _outcomes(rec, criterion)
        for got in outcomes:
            games += 1
            if got == "tie":
                ties += 1
                wins[u, a, b] += 0.5
                wins[u, b, a] += 0.5
            else:
                wins[u, index[got], b if got == rec["a"] else a] += 1
        raw = [(rec["answers"].get(o) or {}).get(criterion) for o in ORDERS]
        decisive += sum(x in ("A", "B") for x in raw)
        first_wins += sum(x == "A" for x in raw)
        if all(x in ("A", "B") for x in raw):
            both += 1
            biased += raw[0] == raw[1]  # the same position won in both orders: the pictures did not decide
        net = sum(1 if g == rec["a"] else -1 if g == rec["b"] else 0 for g in outcomes)
        sign = _pointwise_sign(table, rec, metric) if metric else np.nan
        if net != 0 and np.isfinite(sign) and sign != 0:
            compared += 1
            agree += (net > 0) == (sign > 0)
    strength, lo, hi = stats.bt_interval(wins) if records else (np.zeros(len(systems)),) * 3
    means = [np.nanmean([r[metric] for r in table.values() if r["system"] == s] or [np.nan]) for s in systems] if metric else []
    total = wins.sum(0)
    rate = [[None if i == j or total[i, j] + total[j, i] == 0 else float(total[i, j] / (total[i, j] + total[j, i]))
             for j in range(len(systems))] for i in range(len(systems))]  # fmt: skip
    return CriterionSummary(
        criterion, systems, [float(x) for x in strength], [float(x) for x in lo], [float(x) for x in hi], rate, games, ties,
        biased / both if both else None, first_wins / decisive if decisive else None, metric,
        agree / compared if compared else None, compared, _kendall(list(strength), means),
    )  # fmt: skip


def _kendall(a: list[float], b: list[float]) -> float | None:
    """Kendall's tau-a of two scorings of the same systems (None when fewer than two are scored)."""
    keep = [(x, y) for x, y in zip(a, b, strict=False) if np.isfinite(x) and np.isfinite(y)]
    pairs = list(itertools.combinations(keep, 2))
    if not pairs:
        return None
    return float(sum(np.sign(x1 - x2) * np.sign(y1 - y2) for (x1, y1), (x2, y2) in pairs) / len(pairs))


__all__ = ["PAIR_LOG", "CriterionSummary", "PairJudge", "PairResult", "pair_items", "pairwise_stage", "read_pairwise",
           "summarise"]  # fmt: skip
