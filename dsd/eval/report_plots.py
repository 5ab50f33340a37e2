"""The pictures of the ``dsd eval`` report: matplotlib plots and the captioned contact-sheet thumbnails.

Every plot shows the 95 % intervals of dsd/eval/tables.py (subjects resampled): the CP-vs-PF plane
with one point per system and both intervals as error bars, the pairwise win matrix and the
Bradley-Terry strengths, per-subject bars, per-checkpoint curves, and in multi-reference mode each
metric against the number of references k.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NAMES = {"cp": "concept preservation (CP)", "pf": "prompt following (PF)", "clip_i": "CLIP-I", "clip_t": "CLIP-T",
         "dino": "DINOv2", "dino_v1": "DINOv1", "cp_x_pf": "CP x PF", "recon_mse": "frame-one MSE"}  # fmt: skip
THUMB = 200


def _available(summary, names) -> list[str]:
    return [n for n in names if n in summary and summary[n].notna().any()]


def write_plots(frame, summary, pairwise: dict[str, Any] | None, folder: Path) -> dict[str, str]:
    """{name: relative path} of the plots that apply to this run."""
    import matplotlib.pyplot as plt

    made = {}
    makers = (("plane", _plot_plane), ("per_subject", _plot_subjects), ("checkpoints", _plot_steps),
              ("references", _plot_references))  # fmt: skip
    figures = [(name, fn(summary)) for name, fn in makers]
    if pairwise:
        figures.append(("pairwise", _plot_pairwise(pairwise)))
    for name, fig in figures:
        if fig is not None:
            folder.mkdir(parents=True, exist_ok=True)
            fig.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            made[name] = f"plots/{name}.png"
    return made


def _plot_plane(summary):
    import matplotlib.pyplot as plt

    overall = summary[summary.level == "overall"]
    x, y = ("cp", "pf") if _available(overall, ("cp", "pf")) == ["cp", "pf"] else ("clip_i", "clip_t")
    if _available(overall, (x, y)) != [x, y]:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for _, row in overall.iterrows():
        xerr = [[row[x] - row[f"{x}_lo"]], [row[f"{x}_hi"] - row[x]]]
        yerr = [[row[y] - row[f"{y}_lo"]], [row[f"{y}_hi"] - row[y]]]
        ax.errorbar(row[x], row[y], xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=str(row.system))
        ax.annotate(str(row.system), (row[x], row[y]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel(NAMES[x])
    ax.set_ylabel(NAMES[y])
    if x == "cp":
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    ax.set_title("one point per system (bars: 95% interval over subjects)", fontsize=9)
    ax.grid(alpha=0.3)
    return fig


def _plot_pairwise(pairwise: dict[str, Any]):
    import matplotlib.pyplot as plt
    import numpy as np

    crits = list(pairwise["criteria"].values())
    fig, axes = plt.subplots(2, len(crits), figsize=(4.6 * len(crits), 8), squeeze=False)
    for k, c in enumerate(crits):
        n = len(c.systems)
        matrix = np.array([[np.nan if v is None else v for v in row] for row in c.win_rate], dtype=float)
        ax = axes[0, k]
        ax.imshow(matrix, vmin=0, vmax=1, cmap="RdYlGn")
        ax.set_xticks(range(n), c.systems, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(n), c.systems, fontsize=8)
        for i in range(n):
            for j in range(n):
                if np.isfinite(matrix[i, j]):
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8)
        ax.set_title(f"{c.criterion}: row beats column", fontsize=9)
        ax = axes[1, k]
        order = np.argsort(c.strength)
        strength, lo, hi = (np.asarray(v)[order] for v in (c.strength, c.lo, c.hi))
        ax.errorbar(strength, range(n), xerr=[strength - lo, hi - strength], fmt="o", capsize=3)
        ax.set_yticks(range(n), [c.systems[i] for i in order], fontsize=8)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("Bradley-Terry log-strength (95% interval)")
        ax.grid(alpha=0.3)
    return fig


def _plot_subjects(summary):
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = _available(summary, ("cp_x_pf", "cp", "pf", "clip_i", "clip_t", "dino", "dino_v1"))
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
        ax.set_ylabel(NAMES.get(metric, metric), fontsize=8)
    axes[0, 0].legend(fontsize=8, ncols=min(4, len(systems)))
    axes[0, 0].set_title("per subject (mean over prompts and samples)")
    return fig


def _plot_steps(summary):
    import matplotlib.pyplot as plt

    overall = summary[(summary.level == "overall") & summary.step.notna()].sort_values("step")
    if overall.step.nunique() < 2:
        return None
    metrics = _available(overall, ("cp_x_pf", "cp", "pf", "clip_i", "clip_t", "dino", "dino_v1", "recon_mse"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), squeeze=False)
    steps = overall.step.astype(float)
    for ax, metric in zip(axes[0], metrics, strict=True):
        ax.plot(steps, overall[metric].astype(float), marker="o")
        if f"{metric}_lo" in overall:
            ax.fill_between(steps, overall[f"{metric}_lo"].astype(float), overall[f"{metric}_hi"].astype(float), alpha=0.2)
        ax.set_xlabel("training step")
        ax.set_title(NAMES.get(metric, metric))
        ax.grid(alpha=0.3)
    return fig


def _plot_references(summary):
    """Each metric against k, one line per base system (band: 95% interval over subjects)."""
    import matplotlib.pyplot as plt

    rows = summary[summary.level == "references"]
    if rows.empty:
        return None
    rows = rows.assign(k=rows.group.str.removeprefix("k=").astype(int)).sort_values("k")
    metrics = _available(rows, ("cp", "pf", "cp_x_pf", "dino", "clip_i"))
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for system, g in rows.groupby("system", sort=True):
            ax.plot(g.k, g[metric].astype(float), marker="o", label=str(system))
            ax.fill_between(g.k, g[f"{metric}_lo"].astype(float), g[f"{metric}_hi"].astype(float), alpha=0.2)
        ax.set_xlabel("references (k)")
        ax.set_xticks(sorted(rows.k.unique()))
        ax.set_title(NAMES.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    return fig


# -- contact sheets -------------------------------------------------------------------------------------
def _thumb(path: str, dest: Path) -> None:
    from PIL import Image, ImageOps

    from ..images import read_image

    dest.parent.mkdir(parents=True, exist_ok=True)
    ImageOps.contain(read_image(path), (THUMB, THUMB), Image.Resampling.LANCZOS).save(dest, format="JPEG", quality=85)


def write_sheets(frame, folder: Path, metric: str | None, per_side: int = 3) -> list[dict[str, Any]]:
    """Per system and subject: the reference, the best and the worst outputs by ``metric``, as thumbnails with
    what their captions say (prompt, scores). Paths are relative to the report folder."""
    out = []
    references: dict[str, str] = {}
    for (system, subject), group in frame.groupby(["system", "subject"], sort=True):
        ordered = group.sort_values([metric, "id"], ascending=[False, True]) if metric else group.sort_values("id")
        best = list(ordered.head(per_side).itertuples())
        worst = [r for r in ordered.tail(per_side).itertuples() if r.id not in {b.id for b in best}]
        if subject not in references:
            references[subject] = f"sheets/ref__{_safe(subject)}.jpg"
            _thumb(group.reference.iloc[0], folder / Path(references[subject]).name)
        tiles = []
        for kind, rows in (("best", best), ("worst", worst)):
            for r in rows:
                rel = f"sheets/{_safe(system)}__{_safe(subject)}__{_safe(r.prompt_id)}_{_safe(r.sample or '')}.jpg"
                _thumb(r.path, folder / Path(rel).name)
                tiles.append({"kind": kind, "src": rel, "prompt": r.prompt, "id": r.id, "scores": _scores(r)})
        out.append({"system": str(system), "subject": str(subject), "reference": references[subject], "tiles": tiles})
    return out


def _scores(row) -> dict[str, float]:
    keys = ("cp", "pf", "clip_i", "clip_t", "dino", "dino_v1")
    return {k: float(getattr(row, k)) for k in keys if hasattr(row, k) and getattr(row, k) == getattr(row, k)}


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))
