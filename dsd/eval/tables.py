"""The summary tables of ``dsd eval``: means with bootstrap intervals, and A/B differences.

``aggregate(frame)``: one row per (level, group, system) with the image count, the mean of each metric
and its 95 % interval (``<metric>_lo`` / ``<metric>_hi``; see dsd/eval/stats.py: subjects resampled,
prompts within one subject). The aggregate ``cp_x_pf`` is mean(CP) x mean(PF), the paper's overall
figure (Table 1), and its interval is that product over the same draws.

With several numbers of references (multi-reference mode, issue 20) the long table also has level
``references``: one row per (base system, k), the base system being the name without its ``@k<k>``,
group ``k=<k>``: CP (and every metric) per k.

``differences(frame)``: for every pair of systems and every metric, mean(A) - mean(B) over the subjects
both were scored on, its paired interval and whether it is significant (the interval misses 0).
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from . import stats

MEAN_METRICS = ("clip_i", "clip_t", "dino", "dino_v1", "cp", "pf", "recon_mse")
SUMMARY_METRICS = (*MEAN_METRICS[:6], "cp_x_pf", "recon_mse")
LEVELS = ("overall", "subject", "subject_category", "prompt_category")


def _metrics(frame) -> list[str]:
    return [m for m in MEAN_METRICS if m in frame]


def _values(group, metrics: list[str]) -> np.ndarray:
    return group[metrics].to_numpy(dtype=float)


def _group_row(group, metrics: list[str], unit: str) -> dict:
    values = _values(group, metrics)
    units = (group[unit] if unit in group else group.index.to_series()).astype(str).to_numpy()  # no ids: each image
    point, lo, hi, samples = stats.mean_interval(values, units)
    row = {"images": len(group), "step": group["step"].iloc[0] if "step" in group else None}
    for k, m in enumerate(metrics):
        row[m], row[f"{m}_lo"], row[f"{m}_hi"] = point[k], lo[k], hi[k]
    if "cp" in metrics and "pf" in metrics:
        cp, pf = metrics.index("cp"), metrics.index("pf")
        product_lo, product_hi = stats.interval(samples[:, cp] * samples[:, pf])
        row["cp_x_pf"], row["cp_x_pf_lo"], row["cp_x_pf_hi"] = point[cp] * point[pf], product_lo, product_hi
    return row


def aggregate(frame):
    """Long table: one row per (level, group, system): images, step, each metric's mean and interval."""
    import pandas as pd

    metrics = _metrics(frame)
    rows = []
    for level in LEVELS:
        keys = ["system"] if level == "overall" else ["system", level]
        unit = "prompt_id" if level == "subject" else "subject"
        for key, group in frame.groupby(keys, dropna=False, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            group_name = "all" if level == "overall" else str(key[1])
            rows.append({"level": level, "group": group_name, "system": key[0], **_group_row(group, metrics, unit)})
    rows += _per_references(frame, metrics)
    out = pd.DataFrame(rows)
    cols = ["level", "group", "system", "step", "images"]
    for m in SUMMARY_METRICS:
        for suffix in ("", "_lo", "_hi"):
            if f"{m}{suffix}" not in out:
                out[f"{m}{suffix}"] = np.nan
            cols.append(f"{m}{suffix}")
    out["step"] = pd.array(out["step"], dtype="Int64") if len(out) else out["step"]
    return out[cols]


def base_system(system: str) -> str:
    """A system's name without its multi-reference suffix ("dsd@k3" -> "dsd")."""
    return re.sub(r"@k\d+$", "", str(system))


def has_references(frame) -> bool:
    """Whether ``frame`` holds more than one k, or any k other than 1 (multi-reference mode)."""
    if "references" not in frame or not frame["references"].notna().any():
        return False
    ks = set(frame["references"].dropna().astype(int))
    return ks != {1}


def _per_references(frame, metrics: list[str]) -> list[dict]:
    """The "references" level: one row per (base system, k), unit subject."""
    if not has_references(frame):
        return []
    keyed = frame.assign(base_system=frame.system.map(base_system))
    rows = []
    for (base, k), group in keyed.dropna(subset=["references"]).groupby(["base_system", "references"], sort=True):
        rows.append({"level": "references", "group": f"k={int(k)}", "system": base, **_group_row(group, metrics, "subject")})
    return rows


def differences(frame):
    """A/B: one row per (system A, system B, metric): diff, lo, hi, significant, subjects."""
    import pandas as pd

    metrics = _metrics(frame)
    systems = sorted(frame.system.unique())
    rows = []
    for a, b in itertools.combinations(systems, 2):
        ga, gb = frame[frame.system == a], frame[frame.system == b]
        diff, lo, hi = stats.paired_difference(_values(ga, metrics), ga.subject.astype(str).to_numpy(),
                                               _values(gb, metrics), gb.subject.astype(str).to_numpy())  # fmt: skip
        common = len(set(ga.subject) & set(gb.subject))
        for k, m in enumerate(metrics):
            if np.isfinite(diff[k]):
                rows.append({"a": a, "b": b, "metric": m, "diff": diff[k], "lo": lo[k], "hi": hi[k],
                             "significant": stats.significant(lo[k], hi[k]), "subjects": common})  # fmt: skip
    return pd.DataFrame(rows, columns=["a", "b", "metric", "diff", "lo", "hi", "significant", "subjects"])


def verdict(row) -> str:
    """One line for a difference row: who is ahead, by how much, and whether that is more than noise."""
    lead, lag = (row.a, row.b) if row["diff"] >= 0 else (row.b, row.a)
    sign = 1 if row["diff"] >= 0 else -1
    lo, hi = sorted((sign * row.lo, sign * row.hi))
    text = f"{row.metric}: {lead} ahead of {lag} by {abs(row['diff']):.3f} [{lo:.3f}, {hi:.3f}]"
    return text if row.significant else f"{text}, not significant"


__all__ = ["LEVELS", "MEAN_METRICS", "SUMMARY_METRICS", "aggregate", "base_system", "differences", "has_references",
           "verdict"]
