"""The self-contained report folder of ``dsd eval``.

    report/
      index.html              the answer first: systems ranked with 95 % intervals, A/B verdicts (significant
                              or not), the CP-vs-PF plane and the pairwise win matrix; then the pairwise
                              details, the settings (names, not paths), collapsed sortable tables, captioned
                              contact sheets (relative paths only: copy the folder anywhere)
      scores.parquet/.csv     every image and every score
      summary.csv/.json       means and intervals per system: overall, per subject, per category
      differences.csv         every pair of systems and metric: mean difference, interval, significant
      pairwise.json           with --pairwise: Bradley-Terry strengths, win rates, bias, agreement, cost
      plots/*.png, sheets/*.jpg

The folder is built aside and swapped in whole (dsd.io.atomic_directory).
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
from pathlib import Path
from typing import Any

from ..io import atomic_directory
from .report_plots import NAMES, write_plots, write_sheets
from .stages import METRICS
from .tables import LEVELS, MEAN_METRICS, SUMMARY_METRICS, aggregate, differences, has_references, verdict

logger = logging.getLogger(__name__)
esc = html.escape
RANK_ORDER = ("cp_x_pf", "dino", "dino_v1", "clip_i", "clip_t")


def rank_metric(frame) -> str | None:
    """The metric that orders outputs and systems from best to worst: CP x PF, else DINO, else CLIP."""
    for name in RANK_ORDER:
        if name in frame and frame[name].notna().any():
            return name
    return None


def write_report(frame, report_dir: Path, *, title: str = "DSD evaluation", meta: dict[str, Any] | None = None,
                 pairwise: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Write the report folder for ``frame`` (the table from stages.build_table); returns index.html."""
    import matplotlib

    matplotlib.use("Agg")
    summary = aggregate(frame) if len(frame) else None
    diffs = differences(frame) if len(frame) and frame.system.nunique() > 1 else None
    with atomic_directory(report_dir) as tmp:
        frame.to_parquet(tmp / "scores.parquet", index=False)
        frame.to_csv(tmp / "scores.csv", index=False)
        plots: dict[str, str] = {}
        if summary is not None:
            summary.to_csv(tmp / "summary.csv", index=False)
            (tmp / "summary.json").write_text(summary.to_json(orient="records", indent=1), encoding="utf-8")
            plots = write_plots(frame, summary, pairwise, tmp / "plots")
        if diffs is not None:
            diffs.to_csv(tmp / "differences.csv", index=False)
        if pairwise:
            (tmp / "pairwise.json").write_text(json.dumps(_pairwise_json(pairwise), indent=1), encoding="utf-8")
        sheets = write_sheets(frame, tmp / "sheets", rank_metric(frame)) if len(frame) else []
        page = _html(title, frame, summary, diffs, pairwise, plots, sheets, meta or {})
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return Path(report_dir) / "index.html"


def _pairwise_json(pairwise: dict[str, Any]) -> dict[str, Any]:
    crit = {k: {**dataclasses.asdict(v), "ranking": v.ranking} for k, v in pairwise["criteria"].items()}
    return {**{k: v for k, v in pairwise.items() if k != "criteria"}, "criteria": crit}


# -- text (the CLI's summary) -------------------------------------------------------------------------
def _ci(value, lo, hi) -> str:
    if value != value:
        return ""
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]" if lo == lo and hi == hi else f"{value:.3f}"


def _ranked(summary, metric: str | None):
    overall = summary[summary.level == "overall"]
    return overall.sort_values(metric, ascending=False, na_position="last") if metric else overall


def overall_text(frame, pairwise: dict[str, Any] | None = None) -> str:
    """Systems ranked, each metric as mean [95 % interval], then the A/B verdicts that are not significant."""
    summary = aggregate(frame)
    metric = rank_metric(frame)
    shown = [m for m in SUMMARY_METRICS if summary[m].notna().any()]
    lines = [f"systems ranked by {metric or 'name'} (mean [95% interval over subjects]):"]
    for _, row in _ranked(summary, metric).iterrows():
        parts = [f"{m} {_ci(row[m], row[f'{m}_lo'], row[f'{m}_hi'])}" for m in shown if row[m] == row[m]]
        lines.append(f"  {row.system} ({row.images} images): " + ", ".join(parts))
    if frame.system.nunique() > 1:
        diffs = differences(frame)
        main = diffs[diffs.metric.isin([metric, "cp", "pf"])] if metric else diffs
        lines += [f"  A/B {verdict(r)}" for _, r in main.iterrows()]
    lines += _references_text(summary)
    for c in (pairwise or {}).get("criteria", {}).values():
        ranks = ", ".join(f"{s} {v:+.2f} [{lo:+.2f}, {hi:+.2f}]" for s, v, lo, hi in
                          sorted(zip(c.systems, c.strength, c.lo, c.hi, strict=True), key=lambda t: -t[1]))  # fmt: skip
        bias = "n/a" if c.position_bias is None else f"{c.position_bias:.0%}"
        lines.append(f"pairwise {c.criterion}: {ranks}; position bias {bias}")
    return "\n".join(lines)


def _references_text(summary) -> list[str]:
    """Multi-reference mode: per base system, CP (else the first metric scored) for each k."""
    rows = summary[summary.level == "references"]
    if rows.empty:
        return []
    metric = next((m for m in ("cp", "cp_x_pf", "dino", "clip_i") if rows[m].notna().any()), None)
    if metric is None:
        return []
    lines = [f"{NAMES.get(metric, metric)} per number of references (mean [95% interval]):"]
    for system, g in rows.groupby("system", sort=True):
        g = g.assign(k=g.group.str.removeprefix("k=").astype(int)).sort_values("k")
        lines.append(f"  {system}: " + ", ".join(f"k={r.k} {_ci(r[metric], r[f'{metric}_lo'], r[f'{metric}_hi'])}"
                                                   for _, r in g.iterrows()))  # fmt: skip
    return lines


# -- HTML -----------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1.5em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:2px solid #eee;padding-bottom:.2em}
.lead{color:#555}table{border-collapse:collapse;font-size:13px;margin:.5em 0}
td,th{border-bottom:1px solid #e3e3e3;padding:4px 8px;text-align:right}th{background:#f6f6f6}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}.ci{color:#888;font-size:11px}
table.sortable th{cursor:pointer}table.sortable th:hover{background:#e8eefc}
.ns{color:#a66;font-weight:bold}.sig{color:#2a7;font-weight:bold}
.figs{display:flex;flex-wrap:wrap;gap:1em}.figs figure{margin:0}.figs img{max-width:560px}
details{margin:.6em 0}summary{cursor:pointer;font-weight:bold}
.sheet{display:flex;flex-wrap:wrap;gap:8px;margin:.4em 0 1em}.sheet figure{margin:0;width:200px;font-size:11px}
.sheet img{width:200px;height:200px;object-fit:contain;background:#f3f3f3}.sheet .best{color:#2a7}.sheet .worst{color:#a66}
img.wide{max-width:100%}
"""
SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.title='click to sort';
    th.addEventListener('click', function(){
      var body=table.tBodies[0], rows=Array.prototype.slice.call(body.rows);
      var asc=th.dataset.dir!=='asc'; th.dataset.dir=asc?'asc':'desc';
      rows.sort(function(a,b){
        var x=a.cells[col].dataset.v||a.cells[col].textContent, y=b.cells[col].dataset.v||b.cells[col].textContent;
        var nx=parseFloat(x), ny=parseFloat(y);
        var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);
        return asc?c:-c;
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
"""


def _cell(value, lo=None, hi=None) -> str:
    if value is None or value != value:
        return "<td data-v=''>&ndash;</td>"
    if isinstance(value, float):
        ci = f" <span class='ci'>[{lo:.3f}, {hi:.3f}]</span>" if lo is not None and lo == lo and hi == hi else ""
        return f"<td data-v='{value:.6f}'>{value:.3f}{ci}</td>"
    return f"<td>{esc(str(value))}</td>"


def _metric_table(rows, metrics: list[str], first: list[str], sortable: bool = False) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in [*first, *(NAMES.get(m, m) for m in metrics)])
    body = []
    for _, row in rows.iterrows():
        cells = "".join(_cell(row[c]) for c in first)
        cells += "".join(_cell(float(row[m]), row.get(f"{m}_lo"), row.get(f"{m}_hi")) for m in metrics)
        body.append(f"<tr>{cells}</tr>")
    cls = " class='sortable'" if sortable else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html(title, frame, summary, diffs, pairwise, plots, sheets, meta) -> str:
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{esc(title)}</h1>",
             f"<p class='lead'>{len(frame)} images, {frame.system.nunique()} system(s), {frame.subject.nunique()} "
             "subject(s). Scores in [0, 1] (CP and PF: the judge's 0-4 rubric / 4; CP x PF = mean(CP) x mean(PF)); "
             "[brackets]: 95% interval, bootstrap over subjects.</p>"]  # fmt: skip
    if summary is not None:
        parts += _ranking(frame, summary, diffs)
        parts += _references_html(frame, summary, plots)
        figs = [(k, plots[k]) for k in ("plane", "pairwise") if k in plots]
        if figs:
            parts.append("<div class='figs'>" + "".join(
                f"<figure><img src='{esc(p)}' alt='{esc(k)} plot'><figcaption>{esc(_caption(k))}</figcaption></figure>"
                for k, p in figs) + "</div>")  # fmt: skip
    if pairwise:
        parts += _pairwise_section(pairwise)
    parts += _settings(meta)
    if summary is not None:
        parts += _detail_tables(summary, plots)
    parts += _sheets_html(sheets)
    parts.append("<p>Every score: <a href='scores.csv'>scores.csv</a>, <a href='scores.parquet'>scores.parquet</a>; "
                 "means and intervals: <a href='summary.csv'>summary.csv</a>.</p>"
                 f"<script>{SORT_JS}</script></body></html>")  # fmt: skip
    return "\n".join(parts)


def _caption(kind: str) -> str:
    return {"plane": "Concept preservation vs prompt following: up and right is better.",
            "pairwise": "Pairwise judge: share of games the row system won against the column system (ties half), "
                        "and Bradley-Terry strengths with 95% intervals."}[kind]  # fmt: skip


def _ranking(frame, summary, diffs) -> list[str]:
    metric = rank_metric(frame)
    metrics = [m for m in SUMMARY_METRICS if summary[m].notna().any()]
    ranked = _ranked(summary, metric).reset_index(drop=True)
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    out = [f"<h2>Systems ranked by {esc(NAMES.get(metric, metric or 'name'))}</h2>",
           _metric_table(ranked, metrics, ["rank", "system", "images"])]  # fmt: skip
    if diffs is not None and len(diffs):
        main = diffs[diffs.metric.isin([metric, "cp", "pf"])] if metric else diffs
        items = []
        for _, row in main.iterrows():
            mark = "<span class='sig'>significant</span>" if row.significant else "<span class='ns'>not significant</span>"
            items.append(f"<li>{esc(verdict(row).split(', not significant')[0])} &mdash; {mark}</li>")
        out.append("<h3>A/B differences (paired over subjects)</h3><ul>" + "".join(items) + "</ul>"
                   "<p class='lead'>Not significant: the 95% interval of the difference holds 0, so the data cannot tell "
                   "the two systems apart on this metric. All metrics: <a href='differences.csv'>differences.csv</a>.</p>")
    return out


def _references_html(frame, summary, plots: dict[str, str]) -> list[str]:
    """Multi-reference mode: every metric per (base system, k), and the curve against k."""
    if not has_references(frame):
        return []
    metrics = [m for m in SUMMARY_METRICS if summary[m].notna().any()]
    rows = summary[summary.level == "references"]
    rows = rows.assign(k=rows.group.str.removeprefix("k=").astype(int)).sort_values(["system", "k"])
    out = ["<h2>Per number of references (k)</h2>",
           "<p class='lead'>Each system sampled with the first k pictures of every subject as its references "
           "(systems <code>NAME@kK</code>); scored against the same picture for every k.</p>",
           _metric_table(rows, metrics, ["system", "k", "images"])]  # fmt: skip
    if "references" in plots:
        out.append(f"<figure><img class='wide' src='{esc(plots['references'])}' alt='metrics against k'>"
                   "<figcaption>Against the number of references (band: 95% interval over subjects).</figcaption></figure>")  # fmt: skip
    return out


def _pairwise_section(pairwise: dict[str, Any]) -> list[str]:
    usage = pairwise.get("usage", {})
    out = ["<h2>Pairwise A/B judge</h2>",
           f"<p class='lead'>{pairwise.get('records', 0)} (pair, item) comparisons, each asked in both orders: "
           f"{usage.get('requests', 0)} requests ({usage.get('cached', 0)} from the cache), "
           f"{usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out tokens, "
           f"${usage.get('cost_usd', 0.0):.4f}.</p>"]  # fmt: skip
    for c in pairwise["criteria"].values():
        order = sorted(range(len(c.systems)), key=lambda i: -c.strength[i])
        head = "<tr><th>rank</th><th>system</th><th>Bradley-Terry</th>" + "".join(
            f"<th>vs {esc(c.systems[j])}</th>" for j in order) + "</tr>"  # fmt: skip
        rows = []
        for rank, i in enumerate(order, 1):
            cells = "".join(_cell(c.win_rate[i][j]) for j in order)
            rows.append(f"<tr><td>{rank}</td><td>{esc(c.systems[i])}</td>{_cell(c.strength[i], c.lo[i], c.hi[i])}{cells}</tr>")
        bias = "n/a" if c.position_bias is None else f"{c.position_bias:.1%}"
        first = "n/a" if c.first_shown_wins is None else f"{c.first_shown_wins:.1%}"
        agree = "n/a" if c.agreement is None else f"{c.agreement:.1%} of {c.agreement_items} items ({c.pointwise_metric})"
        if c.rank_agreement is not None:
            agree += f"; ranking vs mean {c.pointwise_metric}: Kendall tau {c.rank_agreement:+.2f}"
        out += [f"<h3>{esc(c.criterion)}</h3><table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>",
                f"<p>{c.games} answers, {c.ties} ties. Position bias (the same position won in both orders): {bias}; "
                f"first-shown image picked in {first} of decisive answers. Agreement with the pointwise scores: "
                f"{esc(agree)}.</p>"]  # fmt: skip
    return out


def _name(value: Any) -> str:
    return Path(str(value)).name if value else "none"


def _settings(meta: dict[str, Any]) -> list[str]:
    if not meta:
        return []
    rows = [("benchmark", f"{_name(meta.get('benchmark'))} ({meta.get('layout')}, {meta.get('subjects')} subjects, "
                          f"{meta.get('prompts')} prompts)"),
            ("systems", ", ".join(map(str, meta.get("systems") or []))),
            ("embeddings", f"CLIP {_name(meta.get('clip'))}, DINOv2 {_name(meta.get('dino'))}, "
                           f"DINOv1 {_name(meta.get('dino_v1'))}")]  # fmt: skip
    rows.append(("protocol", str(meta.get("protocol") or "ours")))
    judge = meta.get("judge")
    if judge:
        endpoint = "custom endpoint" if judge.get("base_url") else "provider default"
        rows.append(("judge", f"{judge['kind']} {judge['model']} ({endpoint}), {judge['repeats']} repeat(s)"
                              f"{', debiased CP' if judge.get('debiased') else ''}"))  # fmt: skip
    sampling = meta.get("sampling")
    if sampling:
        rows.append(("sampling", f"{sampling['steps']} steps, guidance {sampling['guidance']}, "
                                 f"{sampling['width']}x{sampling['height']}, seeds {list(sampling['seeds'])}, fit {sampling['fit']}"))  # fmt: skip
    for key in ("judge usage (this run)", "pairwise judge usage (this run)"):
        if meta.get(key):
            u = meta[key]
            rows.append((key, f"{u['requests']} requests, {u['cached']} cached, {u['retries']} retries, ${u['cost_usd']:.4f}"))
    body = "".join(f"<tr><th>{esc(k)}</th><td style='text-align:left'>{esc(v)}</td></tr>" for k, v in rows)
    return ["<h2>Settings</h2>", f"<table>{body}</table>"]


def _detail_tables(summary, plots: dict[str, str]) -> list[str]:
    metrics = [m for m in SUMMARY_METRICS if summary[m].notna().any()]
    out = ["<h2>Details</h2>"]
    if "checkpoints" in plots:
        out.append(f"<figure><img class='wide' src='{esc(plots['checkpoints'])}' alt='per-checkpoint curves'>"
                   "<figcaption>Per checkpoint (band: 95% interval over subjects).</figcaption></figure>")  # fmt: skip
    for level in LEVELS[1:]:
        rows = summary[summary.level == level]
        label = level.replace("_", " ")
        out.append(f"<details><summary>Per {esc(label)} ({len(rows)} rows, click a column to sort)</summary>"
                   f"{_metric_table(rows, metrics, ['group', 'system', 'images'], sortable=True)}</details>")  # fmt: skip
    if "per_subject" in plots:
        out.append(f"<details><summary>Per-subject bars</summary><img class='wide' src='{esc(plots['per_subject'])}' "
                   "alt='per-subject bars'></details>")  # fmt: skip
    return out


def _sheets_html(sheets: list[dict[str, Any]]) -> list[str]:
    if not sheets:
        return []
    out = ["<h2>Contact sheets</h2><p class='lead'>Per system and subject: the reference, the best and the worst "
           "outputs by the ranking metric, each with its prompt and scores.</p>"]
    systems = sorted({s["system"] for s in sheets})
    for k, system in enumerate(systems):
        blocks = []
        for sheet in (s for s in sheets if s["system"] == system):
            tiles = [f"<figure><img src='{esc(sheet['reference'])}' alt='reference {esc(sheet['subject'])}'>"
                     f"<figcaption><b>reference</b> {esc(sheet['subject'])}</figcaption></figure>"]  # fmt: skip
            for t in sheet["tiles"]:
                scores = ", ".join(f"{NAMES.get(k2, k2).split(' (')[0]} {v:.2f}" for k2, v in t["scores"].items())
                tiles.append(f"<figure><img src='{esc(t['src'])}' alt='{esc(t['id'])}'><figcaption>"
                             f"<b class='{t['kind']}'>{t['kind']}</b> {esc(t['prompt'])}<br>{esc(scores)}</figcaption></figure>")  # fmt: skip
            blocks.append(f"<h4>{esc(sheet['subject'])}</h4><div class='sheet'>{''.join(tiles)}</div>")
        opened = " open" if k == 0 else ""
        out.append(f"<details{opened}><summary>{esc(system)} ({len(blocks)} subjects)</summary>{''.join(blocks)}</details>")
    return out


__all__ = ["MEAN_METRICS", "METRICS", "aggregate", "differences", "overall_text", "rank_metric", "write_report"]
