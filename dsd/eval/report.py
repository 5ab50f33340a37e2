"""The self-contained report folder of ``dsd eval``.

    report/
      index.html              tables, plots and contact sheets (relative paths only: copy the folder anywhere)
      scores.parquet/.csv     every image and every score
      summary.csv/.json       means per system: overall, per subject, per subject category, per prompt category
      plots/*.png             per-subject bars, the CP-vs-PF plane (one point per system), per-checkpoint curves
      sheets/*.png            per system and subject: reference | best outputs | worst outputs

Aggregates are means over images; the aggregate ``cp_x_pf`` is mean(CP) x mean(PF), the paper's
overall figure (Table 1). The folder is built aside and swapped in whole (dsd.io.atomic_directory).
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

from ..io import atomic_directory
from .stages import METRICS

logger = logging.getLogger(__name__)

MEAN_METRICS = ("clip_i", "clip_t", "dino", "cp", "pf", "recon_mse")
LEVELS = ("overall", "subject", "subject_category", "prompt_category")
THUMB = 160


def rank_metric(frame) -> str | None:
    """The metric that orders outputs from best to worst: the judge's CP x PF, else DINO, else CLIP-I."""
    for name in ("cp_x_pf", "dino", "clip_i", "clip_t"):
        if name in frame and frame[name].notna().any():
            return name
    return None


def aggregate(frame):
    """Long table: one row per (level, group, system) with the image count and the mean of each metric."""
    import pandas as pd

    parts = []
    for level in LEVELS:
        keys = ["system"] if level == "overall" else ["system", level]
        grouped = frame.groupby(keys, dropna=False, sort=True)
        agg = grouped[list(MEAN_METRICS)].mean()
        agg["images"] = grouped.size()
        agg["step"] = grouped["step"].first()
        agg = agg.reset_index()
        agg.insert(0, "level", level)
        agg.insert(1, "group", "all" if level == "overall" else agg.pop(level).astype(str))
        parts.append(agg)
    out = pd.concat(parts, ignore_index=True)
    out["cp_x_pf"] = out["cp"] * out["pf"]
    cols = ["level", "group", "system", "step", "images", *MEAN_METRICS[:5], "cp_x_pf", "recon_mse"]
    return out[cols]


def write_report(frame, report_dir: Path, *, title: str = "DSD evaluation", meta: dict[str, Any] | None = None) -> Path:
    """Write the report folder for ``frame`` (the table from stages.build_table); returns index.html."""
    import matplotlib

    matplotlib.use("Agg")
    summary = aggregate(frame) if len(frame) else None
    with atomic_directory(report_dir) as tmp:
        frame.to_parquet(tmp / "scores.parquet", index=False)
        frame.to_csv(tmp / "scores.csv", index=False)
        plots: list[str] = []
        if summary is not None:
            summary.to_csv(tmp / "summary.csv", index=False)
            (tmp / "summary.json").write_text(summary.to_json(orient="records", indent=1), encoding="utf-8")
            (tmp / "plots").mkdir()
            plots = _plots(frame, summary, tmp / "plots")
        sheets = _sheets(frame, tmp / "sheets")
        (tmp / "index.html").write_text(_html(title, frame, summary, plots, sheets, meta or {}), encoding="utf-8")
    return Path(report_dir) / "index.html"


# -- plots ------------------------------------------------------------------------------------------
def _plots(frame, summary, folder: Path) -> list[str]:
    made = []
    for name, fn in (("per_subject.png", _plot_subjects), ("plane.png", _plot_plane), ("checkpoints.png", _plot_steps)):
        fig = fn(frame, summary)
        if fig is not None:
            fig.savefig(folder / name, dpi=100, bbox_inches="tight")
            import matplotlib.pyplot as plt

            plt.close(fig)
            made.append(f"plots/{name}")
    return made


def _available(summary, names) -> list[str]:
    return [n for n in names if summary[n].notna().any()]


def _plot_subjects(frame, summary):
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = _available(summary, ("cp_x_pf", "cp", "pf", "clip_i", "clip_t", "dino"))
    if not metrics:
        return None
    rows = summary[summary.level == "subject"]
    subjects = sorted(rows.group.unique())
    systems = sorted(rows.system.unique())
    width_in = min(40.0, max(6.0, 0.9 * len(subjects) * len(systems) + 2))  # 150 DreamBench++ subjects stay printable
    fig, axes = plt.subplots(len(metrics), 1, figsize=(width_in, 2.6 * len(metrics)), squeeze=False)
    width = 0.8 / len(systems)
    x = np.arange(len(subjects))
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        for k, system in enumerate(systems):
            sub = rows[rows.system == system].set_index("group").reindex(subjects)
            ax.bar(x + k * width, sub[metric].to_numpy(dtype=float), width, label=system)
        ax.set_xticks(x + width * (len(systems) - 1) / 2, subjects, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(metric)
    axes[0, 0].legend(fontsize=8, ncols=min(4, len(systems)))
    axes[0, 0].set_title("per subject (mean over prompts and samples)")
    return fig


def _plot_plane(frame, summary):
    import matplotlib.pyplot as plt

    overall = summary[summary.level == "overall"]
    x, y = ("cp", "pf") if _available(overall, ("cp", "pf")) == ["cp", "pf"] else ("clip_i", "clip_t")
    if _available(overall, (x, y)) != [x, y]:
        return None
    fig, ax = plt.subplots(figsize=(5, 5))
    for _, row in overall.iterrows():
        ax.scatter(row[x], row[y], s=40)
        ax.annotate(str(row.system), (row[x], row[y]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    names = {"cp": "concept preservation", "pf": "prompt following", "clip_i": "CLIP-I", "clip_t": "CLIP-T"}
    ax.set_xlabel(names[x])
    ax.set_ylabel(names[y])
    if x == "cp":
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    ax.set_title("one point per system")
    ax.grid(alpha=0.3)
    return fig


def _plot_steps(frame, summary):
    import matplotlib.pyplot as plt

    overall = summary[(summary.level == "overall") & summary.step.notna()].sort_values("step")
    if overall.step.nunique() < 2:
        return None
    metrics = _available(overall, ("cp_x_pf", "cp", "pf", "clip_i", "clip_t", "dino", "recon_mse"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        ax.plot(overall.step.astype(float), overall[metric].astype(float), marker="o")
        ax.set_xlabel("training step")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    return fig


# -- contact sheets ---------------------------------------------------------------------------------
def _thumb(path: str):
    from PIL import Image, ImageOps

    from ..images import read_image

    return ImageOps.contain(read_image(path), (THUMB, THUMB), Image.Resampling.LANCZOS)


def _sheets(frame, folder: Path, per_side: int = 3) -> list[tuple[str, str, str]]:
    """(system, subject, relative path) of one sheet per system and subject: reference | best | worst."""
    from PIL import Image, ImageDraw

    metric = rank_metric(frame)
    out = []
    for (system, subject), group in frame.groupby(["system", "subject"], sort=True):
        ordered = group.sort_values([metric, "id"], ascending=[False, True]) if metric else group.sort_values("id")
        best = list(ordered.head(per_side).itertuples())
        worst = [r for r in ordered.tail(per_side).itertuples() if r.id not in {b.id for b in best}]
        tiles = [("reference", group.reference.iloc[0])] + [(_label(r, metric, "best"), r.path) for r in best]
        tiles += [(_label(r, metric, "worst"), r.path) for r in worst]
        sheet = Image.new("RGB", (len(tiles) * (THUMB + 8) + 8, THUMB + 36), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for k, (label, path) in enumerate(tiles):
            x = 8 + k * (THUMB + 8)
            sheet.paste(_thumb(path), (x, 8))
            draw.text((x, THUMB + 14), label[:28], fill=(0, 0, 0))
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{_safe(system)}__{_safe(subject)}.png"
        sheet.save(folder / name)
        out.append((str(system), str(subject), f"sheets/{name}"))
    return out


def _label(row, metric: str | None, kind: str) -> str:
    value = getattr(row, metric) if metric else None
    score = f" {metric}={value:.2f}" if value is not None and value == value else ""
    sample = f"_{row.sample}" if row.sample else ""
    return f"{kind} {row.prompt_id}{sample}{score}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))


# -- HTML -------------------------------------------------------------------------------------------
def _html(title, frame, summary, plots, sheets, meta) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}</style></head><body>",
             f"<h1>{esc(title)}</h1>", f"<p>{len(frame)} images, {frame.system.nunique()} system(s), "
             f"{frame.subject.nunique()} subject(s). Scores in [0, 1]; CP and PF are the judge's 0-4 rubric / 4; "
             "the aggregate cp_x_pf is mean(CP) x mean(PF).</p>"]  # fmt: skip
    if meta:
        parts.append(f"<pre>{esc(json.dumps(meta, indent=1, sort_keys=True, default=str))}</pre>")
    if summary is not None:
        for level in LEVELS:
            rows = summary[summary.level == level].drop(columns=["level"]).dropna(axis=1, how="all")
            parts += [f"<h2>{esc(level.replace('_', ' '))}</h2>", rows.to_html(index=False, float_format=lambda v: f"{v:.3f}")]
    parts += [f"<h2>{esc(Path(p).stem.replace('_', ' '))}</h2><img src='{esc(p)}' alt='{esc(p)}'>" for p in plots]
    if sheets:
        parts.append("<h2>contact sheets (reference | best | worst)</h2>")
        parts += [f"<h3>{esc(system)} / {esc(subject)}</h3><img src='{esc(path)}' alt='{esc(subject)}'>"
                  for system, subject, path in sheets]  # fmt: skip
    parts.append("<p>Every score: <a href='scores.csv'>scores.csv</a>, <a href='scores.parquet'>scores.parquet</a>; "
                 "means: <a href='summary.csv'>summary.csv</a>.</p></body></html>")  # fmt: skip
    return "\n".join(parts)


__all__ = ["METRICS", "aggregate", "rank_metric", "write_report"]
