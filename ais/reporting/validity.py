"""The report's section "Which map to trust", from results/validity/summary.json and faithfulness.parquet.

:func:`validity_section` (one call from :func:`ais.reporting.page.render_page`)
writes the degenerate warnings as a highlighted box, then one table, method x
(deletion, insertion, randomisation, localisation, external agreement) with
95 % intervals, a verdict per method computed from the numbers
(:func:`ais.validity.verdict.verdict`), the faithfulness curves and the
randomisation curve (:func:`draw_validity_figures`), and the run-level
findings in plain words (what the helpfulness sign reduces to, exact
ablation against gradients, pruning generalisation).
"""

from __future__ import annotations

import html
import io
import logging
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ais.reporting.markup import fmt, img, table

logger = logging.getLogger(__name__)

WARNING_STYLE = "background:#fff4e5;border:1px solid #e69f00;padding:0.5em 1em;margin:1em 0"
BASELINE_STYLE = {"random": ("#777777", "--"), "uniform": ("#bbbbbb", ":")}


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _interval(block: Mapping[str, Any] | None) -> str:
    """``mean [lo, hi]`` of a summary block (a dash when missing)."""
    if not block or block.get("mean") is None:
        return "&ndash;"
    lo, hi = block.get("lo"), block.get("hi")
    bounds = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else ""
    return f"{block['mean']:.2f}{bounds}"


def _localisation(entry: Mapping[str, Any]) -> str:
    loc = entry.get("localisation") or {}
    parts = [f"{mask}: PG {fmt(v.get('pointing_game'), 2)}, RM {fmt(v.get('relevance_mass'), 2)}"
             for mask, v in loc.items() if isinstance(v, Mapping)]
    return "; ".join(parts) or "&ndash;"


def _external(entry: Mapping[str, Any]) -> str:
    ext = entry.get("external") or {}
    if ext.get("cc") is None:
        return "&ndash;"
    return f"CC {ext['cc']:.2f}, NSS {fmt(ext.get('nss'), 2)}, AUC-Judd {fmt(ext.get('auc_judd'), 2)}"


def _randomisation(entry: Mapping[str, Any]) -> str:
    rnd = entry.get("randomisation") or {}
    if not rnd:
        return "&ndash;"
    top, deep = rnd["top"], rnd["deepest"]
    return (f"top ({html.escape(top['block'])}) ρ {_interval(top['spearman'])}, SSIM {fmt(top['ssim']['mean'], 2)}; "
            f"all ρ {_interval(deep['spearman'])}, SSIM {fmt(deep['ssim']['mean'], 2)}")


def _row_html(name: str, entry: Mapping[str, Any]) -> str:
    cells = [html.escape(f"{name} ({entry.get('sign', 'pos')})"),
             f"{_interval(entry.get('deletion_auc'))}<br>gain {_interval(entry.get('deletion_gain'))}",
             f"{_interval(entry.get('insertion_auc'))}<br>gain {_interval(entry.get('insertion_gain'))}",
             _randomisation(entry), _localisation(entry), _external(entry), html.escape(entry.get("verdict", ""))]
    return "<tr>" + "".join(f'<td class="l">{c}</td>' for c in cells) + "</tr>"


def trust_table(summary: Mapping[str, Any]) -> str:
    """The method x measure table (HTML; values already escaped or numeric)."""
    head = ["map (sign)", "deletion AUC", "insertion AUC", "randomisation (Spearman ρ, SSIM)",
            "localisation (pointing game, relevance mass)", "external agreement", "verdict"]
    rows = [_row_html(n, e) for n, e in (summary.get("methods") or {}).items()]
    base = summary.get("baselines") or {}
    for name, entry in base.items():
        rows.append("<tr>" + "".join(f'<td class="l">{c}</td>' for c in (
            html.escape(f"{name} map (baseline)"), _interval(entry.get("deletion_auc")),
            _interval(entry.get("insertion_auc")), "", "", "", "")) + "</tr>")
    th = "".join(f'<th class="l">{html.escape(h)}</th>' for h in head)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def warnings_box(warnings: Sequence[str]) -> list[str]:
    """The degenerate warnings as one highlighted box (nothing when there are none)."""
    if not warnings:
        return []
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return [f'<div class="warnings" style="{WARNING_STYLE}"><strong>Warnings: these results are degenerate '
            f"and should not be read as if they meant something</strong><ul>{items}</ul></div>"]


def _findings(summary: Mapping[str, Any]) -> list[str]:
    """The run-level findings in plain words."""
    out = []
    sign = summary.get("sign_reduction") or {}
    for key in ("sentence", "map_sentence"):
        if sign.get(key):
            out.append(f"<p><strong>What the helpfulness sign reduces to.</strong> {html.escape(sign[key])}</p>")
    taylor = summary.get("taylor") or {}
    if taylor.get("sentence"):
        out.append(f"<p><strong>What exact ablation adds over gradients.</strong> {html.escape(taylor['sentence'])}</p>")
    return out


def _pruning(summary: Mapping[str, Any]) -> list[str]:
    pruning = summary.get("pruning") or {}
    rows = []
    for metric, entry in pruning.items():
        for order in ("harmful", "helpful", "random"):
            curve = entry.get(order) or []
            if curve:
                last = curve[min(len(curve) - 1, max(0, len(curve) // 2))]
                rows.append([metric, order, entry.get("baseline"), last["k"], last.get("value"), last.get("lo"),
                             last.get("hi")])
    if not rows:
        return []
    return ["<p><strong>Pruning generalisation</strong> (units ranked on one split, zeroed k at a time, scored on "
            "the held-out test images; the middle of the k grid):</p>",
            table(["metric", "units removed first", "unpruned", "k", "value", "lo", "hi"], rows, left=2)]


def validity_section(summary: Mapping[str, Any] | None, figures: Mapping[str, bytes]) -> list[str]:
    """The warnings box and the section "Which map to trust" (nothing when the run has no validity summary)."""
    if not summary:
        return []
    n, steps = summary.get("images"), summary.get("steps")
    parts = [*warnings_box(summary.get("warnings") or []),
             '<h2 id="trust">Which map to trust</h2>',
             f"<p>Every map of the run on {fmt(n)} image(s), {fmt(steps)} steps "
             f"(results/validity/). <em>Deletion</em> replaces the pixels a map ranks first by "
             f"{html.escape(str((summary.get('substrate') or {}).get('deletion')))}, <em>insertion</em> puts them "
             f"back onto a {html.escape(str((summary.get('substrate') or {}).get('insertion')))}; AUCs are the mean "
             "change of the explained output in prediction standard deviations (scale "
             f"{fmt(summary.get('scale'))}). For the most positive pixels first (sign pos), a faithful map has a "
             "deletion AUC below and an insertion AUC above the random map's; <em>gain</em> is the paired "
             "difference over the random map, turned so that &gt; 0 is better, with 95 % bootstrap intervals. "
             "Randomisation: Spearman ρ between the map of the trained model and the map of a model whose blocks "
             "were re-initialised from the output down (top: the output block only; all: every block); a map "
             "that explains the model should change (ρ near 0).</p>",
             trust_table(summary)]
    for name, caption in (("validity_curves", "Mean deletion and insertion curves per map (most positive pixels "
                           "first), with the random and the all-equal map."),
                          ("validity_randomisation", "Mean Spearman ρ between the trained and the randomised "
                           "model's map, by number of blocks randomised from the output down.")):
        if name in figures:
            parts.append(img(figures[name], name, caption))
    return parts + _findings(summary) + _pruning(summary)


def draw_validity_figures(faithfulness: pd.DataFrame | None, summary: Mapping[str, Any] | None) -> dict[str, bytes]:
    """``validity_curves`` (from faithfulness.parquet) and ``validity_randomisation`` (from the summary), PNG."""
    out: dict[str, bytes] = {}
    if faithfulness is not None and len(faithfulness):
        fig = _figure(10, 3.6)
        for ax, col, title in zip(fig.subplots(1, 2), ("deletion_curve", "insertion_curve"), ("deletion", "insertion")):
            for (name, sign), rows in faithfulness.groupby(["map", "sign"], sort=False):
                if sign != "pos":
                    continue
                curve = np.mean(np.stack(rows[col].to_numpy()), axis=0)
                colour, style = BASELINE_STYLE.get(name, (None, "-"))
                ax.plot(np.linspace(0, 1, len(curve)), curve, style, color=colour, label=name, lw=1.4)
            ax.set(title=title, xlabel="fraction of pixels " + ("removed" if title == "deletion" else "inserted"),
                   ylabel="change of the output (prediction SDs)")
            ax.axhline(0, color="#ddd", lw=0.8)
        fig.axes[-1].legend(fontsize=7, ncol=2)
        out["validity_curves"] = _png(fig)
    depths = {n: e["randomisation"].get("by_depth") for n, e in ((summary or {}).get("methods") or {}).items()
              if (e.get("randomisation") or {}).get("by_depth")}
    if depths:
        fig = _figure(6, 3.4)
        ax = fig.subplots()
        for name, rows in depths.items():
            ax.plot([r["depth"] for r in rows], [np.nan if r["spearman"] is None else r["spearman"] for r in rows],
                    marker="o", ms=3, label=name)
        ax.set(xlabel="blocks randomised from the output", ylabel="Spearman ρ with the trained map", ylim=(-1, 1))
        ax.axhline(0, color="#ddd", lw=0.8)
        ax.legend(fontsize=7, ncol=2)
        out["validity_randomisation"] = _png(fig)
    return out
