"""The final report: ``index.html`` (one self-contained page) and ``summary.json``.

:func:`summarize` reads the workflow's outputs and returns the key figures
as plain JSON values (``summary.json``); :func:`build_report` adds the
figures (matplotlib, also written as PNG files for Snakemake's own report)
and writes one HTML page with every figure embedded as a data URI, so the
page opens from disk, can be mailed or put in a paper's supplement as one
file. Links to the raw tables are relative to the page
(``results/report/index.html`` -> ``../fusion/channels.parquet``).

Wall time per stage comes from the rules' ``benchmark:`` files under
``results/benchmarks/``: per stage the number of jobs, the sum of their
seconds (compute) and the longest job.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ais.fusion import QUADRANTS
from ais.heatmap_stage import GALLERY_GROUPS, gallery_selection
from ais.io import write_bytes, write_json, write_text
from ais.tables import LOCALIZATION_AUCS, SPLITS

log = logging.getLogger(__name__)

#: Benchmark folders (under results/benchmarks) and the stage each one times, in workflow order.
STAGES = {
    "demo": "demo data",
    "data": "intake",
    "model": "fine-tune",
    "ablation": "ablation",
    "fusion": "fusion",
    "heatmaps": "heatmaps",
    "report": "report",
}


@dataclass
class ReportInputs:
    """Paths of everything the report summarises (relative paths resolve from the working directory)."""

    manifest: str
    rejected: str
    metrics: str
    history: str
    predictions: str
    training_curve: str
    scores: str
    channels: str
    fusion_summary: str
    agreement: str
    localization: str
    gallery: str
    crops: str
    crops_figure: str
    panels: Sequence[str] = ()
    benchmarks: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- summary


def read_benchmarks(folder: str | os.PathLike | None) -> pd.DataFrame:
    """One row per benchmark file: ``stage``, ``job`` (path below the folder), ``seconds``, ``max_rss_mb``."""
    rows = []
    if folder and Path(folder).is_dir():
        root = Path(folder)
        for path in sorted(root.rglob("*.tsv")):
            try:
                table = pd.read_csv(path, sep="\t")
            except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
                log.warning("benchmark file %s unreadable (%s); left out of the wall times", path, exc)
                continue
            if table.empty or "s" not in table.columns:
                continue
            rel = path.relative_to(root)
            rss = pd.to_numeric(table.get("max_rss"), errors="coerce")
            rows.append({
                "stage": rel.parts[0] if len(rel.parts) > 1 else rel.stem,
                "job": rel.as_posix(),
                "seconds": float(table["s"].iloc[-1]),
                "max_rss_mb": float(rss.iloc[-1]) if rss is not None and rss.notna().any() else None,
            })
    return pd.DataFrame(rows, columns=["stage", "job", "seconds", "max_rss_mb"])


def stage_times(bench: pd.DataFrame) -> list[dict[str, Any]]:
    """Per stage: jobs, summed and longest job seconds, peak memory; workflow order, unknown stages last."""
    out = []
    order = {name: i for i, name in enumerate(STAGES)}
    for stage, group in sorted(bench.groupby("stage"), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
        rss = group["max_rss_mb"].dropna()
        out.append({
            "stage": stage,
            "label": STAGES.get(stage, stage),
            "jobs": int(len(group)),
            "seconds_total": round(float(group["seconds"].sum()), 3),
            "seconds_longest_job": round(float(group["seconds"].max()), 3),
            "max_rss_mb": round(float(rss.max()), 1) if len(rss) else None,
        })
    return out


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _describe(values: pd.Series) -> dict[str, Any]:
    values = values.dropna().astype(float)
    if values.empty:
        return {"n": 0, "mean": None, "sd": None, "min": None, "median": None, "max": None}
    return {
        "n": int(len(values)), "mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "min": float(values.min()), "median": float(values.median()), "max": float(values.max()),
    }


def read_rejected(path: str) -> pd.DataFrame:
    """The rejected rows written by intake (empty table when none, or when the file is empty)."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def quadrant_counts(scores_path: str) -> dict[str, int]:
    """Image-channel pairs per quadrant, read from the ``quadrant`` column only."""
    column = pq.read_table(scores_path, columns=["quadrant"]).column("quadrant").to_pandas()
    counts = column.value_counts()
    unknown = sorted(set(counts.index) - set(QUADRANTS))
    if unknown:
        raise ValueError(f"{scores_path}: unknown quadrant labels {unknown}")
    return {q: int(counts.get(q, 0)) for q in QUADRANTS}


def _metric_block(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: {"value": m.get("value"), "ci95": m.get("ci95")}
        for name, m in metrics.items() if isinstance(m, Mapping) and "value" in m
    }


def _gallery_choice(agreement: pd.DataFrame, per_group: int) -> dict[str, list[str]]:
    """The gallery's images by group, exactly those of the gallery figure.

    :func:`ais.heatmap_stage.gallery_selection`: best-, median- and
    worst-predicted labelled images by absolute error (``highest`` /
    ``median`` / ``lowest`` predicted realism when no image is labelled).
    """
    chosen = gallery_selection(agreement, per_group)
    groups = dict.fromkeys(group for group, _ in chosen) or dict.fromkeys(GALLERY_GROUPS)
    return {group: [i for g, i in chosen if g == group] for group in groups}


def summarize(inputs: ReportInputs, gallery_per_group: int = 3) -> dict[str, Any]:
    """The report's key figures as plain JSON values (``summary.json``)."""
    manifest = pd.read_parquet(inputs.manifest)
    rejected = read_rejected(inputs.rejected)
    metrics = _read_json(inputs.metrics)
    predictions = pd.read_parquet(inputs.predictions)
    channels = pd.read_parquet(inputs.channels)
    fusion = _read_json(inputs.fusion_summary)
    agreement = pd.read_parquet(inputs.agreement)
    localization = _read_json(inputs.localization)
    crops = pd.read_parquet(inputs.crops)

    counts = manifest["split"].value_counts()
    reasons = rejected["reason"].value_counts() if "reason" in rejected.columns else pd.Series(dtype=int)
    data = {
        "n_images": int(len(manifest)),
        "per_split": {s: int(counts.get(s, 0)) for s in SPLITS},
        "n_labelled": int(manifest["y_true"].notna().sum()),
        "score": _describe(manifest["y_true"]),
        "n_rejected": int(len(rejected)),
        "rejected_reasons": {str(k): int(v) for k, v in reasons.items()},
    }

    test = predictions[(predictions["split"] == "test") & predictions["y_true"].notna()]
    training = {
        "arch": metrics.get("provenance", {}).get("config", {}).get("model", {}).get("arch"),
        "device": metrics.get("device"),
        "best_epoch": metrics.get("best_epoch"),
        "epochs_run": metrics.get("epochs_run"),
        "stopped_early": metrics.get("stopped_early"),
        "test": _metric_block(metrics.get("test", {})),
        "val": _metric_block(metrics.get("val", {})),
        "n_test_predictions": int(len(test)),
    }

    scored = channels[channels["mean_ais_score"].notna()]
    ranked = scored.sort_values(["mean_ais_score", "channel"], ascending=[False, True], kind="mergesort")
    top = lambda frame: [  # noqa: E731
        {"channel": int(r.channel), "mean_ais_score": float(r.mean_ais_score),
         "ci95": [_num(r.mean_ais_score_lo), _num(r.mean_ais_score_hi)],
         "fraction_helpful": _num(r.fraction_helpful), "mean_delta_prediction": _num(r.mean_delta_prediction)}
        for r in frame.itertuples()
    ]
    pairs = quadrant_counts(inputs.scores)
    fusion_out = {
        "scope": fusion.get("scope"),
        "magnitude": fusion.get("magnitude"),
        "n_pairs": int(sum(pairs.values())),
        "quadrants": pairs,
        "n_flipped": fusion.get("n_flipped", fusion.get("flipped")),
        "reliability": fusion.get("reliability"),
        "n_channels": int(len(channels)),
        "top_helpful": top(ranked.head(10)),
        "top_harmful": top(ranked[ranked["mean_ais_score"] < 0].iloc[::-1].head(10)),
    }

    agreement_out: dict[str, Any] = {"n_images": int(len(agreement))}
    for column in [c for c in agreement.columns if c.split("_", 1)[0] in ("cc", "sim", "kld")]:
        agreement_out[column] = _describe(agreement[column])

    run = {
        "git_revision": metrics.get("provenance", {}).get("git_revision"),
        "versions": metrics.get("provenance", {}).get("versions"),
        "config": dict(inputs.config),
        "stages": stage_times(read_benchmarks(inputs.benchmarks)),
    }
    return {
        "run": run,
        "data": data,
        "training": training,
        "fusion": fusion_out,
        "top_channel_crops": {
            "channels": sorted(int(c) for c in crops["channel"].unique()),
            "n_crops": int(len(crops)),
        },
        "heatmaps": {
            "agreement": agreement_out,
            "localization": {k: localization.get(k) for k in LOCALIZATION_AUCS if k in localization}
            | {k: v for k, v in localization.items() if k not in LOCALIZATION_AUCS},
            "gallery": _gallery_choice(agreement, gallery_per_group),
        },
    }


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(out) else out


# --------------------------------------------------------------------------- figures


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


SPLIT_COLOURS = {"train": "#9aa5b1", "val": "#e69f00", "test": "#0072b2", "unlabelled": "#cc79a7"}


def figure_scores(manifest: pd.DataFrame) -> bytes:
    """Histogram of the realism scores per split."""
    fig = _figure(5.5, 3.0)
    ax = fig.add_subplot()
    labelled = manifest[manifest["y_true"].notna()]
    if labelled.empty:
        ax.text(0.5, 0.5, "no labelled images", ha="center", va="center", transform=ax.transAxes)
    else:
        bins = np.histogram_bin_edges(labelled["y_true"].to_numpy(float), bins=30)
        for split in ("train", "val", "test"):
            values = labelled.loc[labelled["split"] == split, "y_true"].to_numpy(float)
            if len(values):
                ax.hist(values, bins=bins, histtype="stepfilled", alpha=0.55, label=f"{split} ({len(values)})",
                        color=SPLIT_COLOURS[split])
        ax.legend(fontsize=8, frameon=False)
    ax.set_xlabel("realism score (y_true)")
    ax.set_ylabel("images")
    return _png(fig)


def figure_predicted(predictions: pd.DataFrame, metrics: Mapping[str, Any]) -> bytes:
    """Predicted against true realism, per split, with the identity line."""
    fig = _figure(4.2, 4.0)
    ax = fig.add_subplot()
    labelled = predictions[predictions["y_true"].notna()]
    for split in ("train", "val", "test"):
        part = labelled[labelled["split"] == split]
        if len(part):
            ax.scatter(part["y_true"], part["y_pred"], s=9 if split == "test" else 5, alpha=0.8 if split == "test" else 0.35,
                       color=SPLIT_COLOURS[split], label=split, linewidths=0)
    if len(labelled):
        lo = float(min(labelled["y_true"].min(), labelled["y_pred"].min()))
        hi = float(max(labelled["y_true"].max(), labelled["y_pred"].max()))
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--")
    srcc = metrics.get("test", {}).get("srcc", {})
    if srcc.get("value") is not None:
        ci = srcc.get("ci95") or [None, None]
        ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if None not in ci else ""
        ax.set_title(f"test SRCC {srcc['value']:.3f}{ci_text}", fontsize=9)
    ax.set_xlabel("true realism")
    ax.set_ylabel("predicted realism")
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def figure_channel_scores(scores_path: str, channels: pd.DataFrame) -> bytes:
    """Left: distribution of the image-channel AIS scores. Right: data-set-level scores per channel with 95 % CIs."""
    scores = pq.read_table(scores_path, columns=["ais_score"]).column("ais_score").to_numpy(zero_copy_only=False)
    scores = scores[~np.isnan(scores.astype(float))] if len(scores) else scores
    fig = _figure(9.0, 3.0)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    if len(scores):
        left.hist(scores, bins=60, color="#555555")
        left.axvline(0.0, color="k", lw=0.6)
    left.set_xlabel("AIS score (image, channel)")
    left.set_ylabel("pairs")
    ranked = channels[channels["mean_ais_score"].notna()].sort_values("mean_ais_score", ascending=False, kind="mergesort")
    x = np.arange(len(ranked))
    if len(ranked):
        right.fill_between(x, ranked["mean_ais_score_lo"].to_numpy(float), ranked["mean_ais_score_hi"].to_numpy(float),
                           color="#bbbbbb", lw=0, label="bootstrap 95 % CI")
        colours = np.where(ranked["mean_ais_score"].to_numpy(float) >= 0, "#b2182b", "#2166ac")
        right.scatter(x, ranked["mean_ais_score"], s=3, c=colours, label="mean AIS score")
        right.axhline(0.0, color="k", lw=0.6)
        right.legend(fontsize=7, frameon=False)
    right.set_xlabel("channels, ranked")
    right.set_ylabel("data-set-level AIS score")
    return _png(fig)


def figure_agreement(agreement: pd.DataFrame) -> bytes:
    """Per-image CC, SIM and KLD between |AIS| and Grad-CAM."""
    fig = _figure(9.0, 2.6)
    for i, metric in enumerate(("cc", "sim", "kld")):
        ax = fig.add_subplot(1, 3, i + 1)
        column = f"{metric}_gradcam"
        values = agreement[column].dropna().to_numpy(float) if column in agreement else np.empty(0)
        if len(values):
            ax.hist(values, bins=25, color="#4d4d4d")
            ax.axvline(np.median(values), color="#d6604d", lw=1.0)
        ax.set_xlabel(f"{metric.upper()}(|AIS|, Grad-CAM)")
        ax.set_yticks([])
    return _png(fig)


def figure_colour_scale() -> bytes:
    """The signed colour scale of the AIS maps (bwr, centred at 0) with its meaning."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, TwoSlopeNorm

    from ais.render import lut

    fig = _figure(6.0, 0.9)
    ax = fig.add_axes((0.05, 0.55, 0.9, 0.3))
    mappable = ScalarMappable(norm=TwoSlopeNorm(vcenter=0.0, vmin=-1.0, vmax=1.0),
                              cmap=ListedColormap(lut("bwr") / 255.0))
    bar = fig.colorbar(mappable, cax=ax, orientation="horizontal", ticks=[-1, -0.5, 0, 0.5, 1])
    bar.ax.tick_params(labelsize=7)
    bar.set_label("blue: lowers realism (or harmful)    0: no effect    red: raises realism (or helpful)", fontsize=7)
    return _png(fig)


# --------------------------------------------------------------------------- HTML


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:0.2em} h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:2em}
table{border-collapse:collapse;margin:0.6em 0;font-size:0.9em} th,td{border:1px solid #ddd;padding:0.25em 0.6em;
text-align:right} th{background:#f4f4f4} td.l,th.l{text-align:left}
figure{margin:1em 0} figcaption{font-size:0.85em;color:#555} img{max-width:100%}
code,pre{background:#f6f6f6;font-size:0.85em} pre{padding:0.6em;overflow-x:auto;max-height:24em}
.muted{color:#777} nav a{margin-right:0.8em}
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, caption: str) -> str:
    return (f'<figure><img src="{_data_uri(png)}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return "&ndash;" if np.isnan(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{_fmt(v)}</td>' for i, v in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ci(block: Mapping[str, Any]) -> str:
    ci = block.get("ci95") or [None, None]
    if ci[0] is None or ci[1] is None:
        return "&ndash;"
    return f"{ci[0]:.3f} to {ci[1]:.3f}"


def _link(target: str, page_dir: Path, text: str | None = None) -> str:
    rel = os.path.relpath(Path(target).resolve(), page_dir.resolve())
    return f'<a href="{html.escape(Path(rel).as_posix())}">{html.escape(text or Path(target).name)}</a>'


def render_html(summary: Mapping[str, Any], figures: Mapping[str, bytes], inputs: ReportInputs,
                page_dir: Path, gallery_panels: Mapping[str, list[tuple[str, bytes]]]) -> str:
    """The report page (every figure embedded)."""
    run, data, training, fusion, maps = (summary[k] for k in ("run", "data", "training", "fusion", "heatmaps"))
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>AIS report</title>", f"<style>{CSS}</style></head><body>",
        "<h1>AIS report: what the realism model sees</h1>",
        f'<p class="muted">git revision {_fmt(run.get("git_revision"))}; model {_fmt(training.get("arch"))} '
        f'on {_fmt(training.get("device"))}; {_fmt(data["n_images"])} images.</p>',
        '<nav><a href="#run">Run</a><a href="#data">Data</a><a href="#training">Training</a>'
        '<a href="#channels">Channel scores</a><a href="#top">Top channels</a><a href="#gallery">Heatmaps</a>'
        '<a href="#agreement">Agreement</a><a href="#localization">Localisation</a><a href="#files">Files</a></nav>',
    ]

    # Run summary
    stages = run.get("stages", [])
    parts += ['<h2 id="run">Run summary</h2>',
              "<p>Wall time per stage from the rules' benchmark files (jobs of a stage may run in parallel: "
              "the longest job bounds the stage's wall time, the sum is its compute time).</p>",
              _table(["stage", "jobs", "sum of job seconds", "longest job (s)", "peak memory (MB)"],
                     [[s["label"], s["jobs"], s["seconds_total"], s["seconds_longest_job"], s["max_rss_mb"]]
                      for s in stages]) if stages else "<p>No benchmark files found.</p>",
              _table(["library", "version"], sorted((run.get("versions") or {}).items())),
              "<details><summary>Configuration</summary><pre>"
              + html.escape(json.dumps(run.get("config", {}), indent=2, sort_keys=True)) + "</pre></details>"]

    # Data
    score = data["score"]
    parts += ['<h2 id="data">Data</h2>',
              _table(["split", "images"], [[s, data["per_split"][s]] for s in SPLITS] + [["all", data["n_images"]]]),
              f"<p>Labelled images: {_fmt(data['n_labelled'])}; realism score mean {_fmt(score['mean'])}, "
              f"sd {_fmt(score['sd'])}, range {_fmt(score['min'])} to {_fmt(score['max'])}. "
              f"Rejected rows: {_fmt(data['n_rejected'])}"
              + (f" ({_link(inputs.rejected, page_dir, 'rejected.csv')})" if data["n_rejected"] else "") + ".</p>"]
    if data["rejected_reasons"]:
        parts.append(_table(["reason", "rows"], sorted(data["rejected_reasons"].items(), key=lambda kv: -kv[1])))
    parts.append(_img(figures["scores"], "score distribution", "Realism scores per split."))

    # Training
    test = training["test"]
    parts += ['<h2 id="training">Training and test metrics</h2>',
              f"<p>Best epoch {_fmt(training['best_epoch'])} of {_fmt(training['epochs_run'])} "
              f"(stopped early: {_fmt(training['stopped_early'])}). Test metrics with bootstrap 95 % intervals:</p>",
              _table(["metric", "value", "95 % interval"],
                     [[name.upper(), block["value"], _ci(block)] for name, block in test.items()]),
              _img(figures["training_curve"], "training curve",
                   "Training and validation loss and validation SRCC per epoch; dashed: the epoch kept."),
              _img(figures["predicted"], "predicted against true", "Predicted against true realism; dashed: identity.")]

    # Channel scores
    quadrants = fusion["quadrants"]
    rows = []
    for helpfulness in ("helpful", "harmful", "neutral"):
        row = [helpfulness] + [quadrants.get(f"{helpfulness}-{d}", 0) for d in ("raises", "lowers", "none")]
        rows.append(row + [sum(row[1:])])
    parts += ['<h2 id="channels">Channel scores</h2>',
              f"<p>Fusion: z-score of |&Delta;y| ({_fmt(fusion['scope'])} scope, magnitude "
              f"{_fmt(fusion['magnitude'])}) times the sign of &Delta;error. "
              f"{_fmt(fusion['n_flipped'])} of {_fmt(fusion['n_pairs'])} image-channel scores have their direction "
              "flipped by a negative z (|&Delta;y| below the mean).</p>",
              "<p>Image-channel pairs per quadrant (helpful: &Delta;error &gt; 0, removing the channel raises the "
              "error; raises realism: &Delta;y &lt; 0, removing the channel lowers the predicted realism):</p>",
              _table(["", "raises realism", "lowers realism", "no effect", "all"], rows)]
    reliability = fusion.get("reliability")
    if reliability:
        rows = [[name, block.get("spearman"), block.get("spearman_sd"), block.get("spearman_brown"),
                 block.get("n_splits"), block.get("n_images")]
                for name, block in reliability.items() if isinstance(block, Mapping)]
        parts += ["<p>Split-half reliability of the data-set-level channel scores: Spearman correlation between "
                  "the scores from two random halves of the images, averaged over random halvings "
                  "(Spearman-Brown: corrected to the full set). <i>ais</i>: mean AIS score; <i>direction</i>: "
                  "mean &minus;&Delta;y.</p>",
                  _table(["score", "split-half Spearman", "sd over halvings", "Spearman-Brown", "halvings",
                          "images"], rows)]
    parts.append(_img(figures["channel_scores"], "channel scores",
                      "Left: all image-channel AIS scores. Right: data-set-level score per channel "
                      "(mean over labelled images) with bootstrap 95 % intervals; red helpful, blue harmful."))

    # Top channels
    parts += ['<h2 id="top">Top channels</h2>',
              _table(["group", "channel", "mean AIS score", "95 % interval", "fraction helpful", "mean Δy"],
                     [["helpful", c["channel"], c["mean_ais_score"], _ci(c), c["fraction_helpful"],
                       c["mean_delta_prediction"]] for c in fusion["top_helpful"][:5]]
                     + [["harmful", c["channel"], c["mean_ais_score"], _ci(c), c["fraction_helpful"],
                         c["mean_delta_prediction"]] for c in fusion["top_harmful"][:5]])]
    if "crops" in figures:
        parts.append(_img(figures["crops"], "top channel crops",
                          "The crops (of the model's input view) that activate each top channel most, "
                          "highest first; one row per channel."))

    # Gallery
    parts += ['<h2 id="gallery">Heatmaps</h2>',
              "<p>Maps are divided by their maximum absolute value into [&minus;1, 1] and drawn over the image "
              "(60 % image, 40 % map) with a red&ndash;blue scale centred at 0. <b>AIS</b>: the layer's ReLU "
              "activations weighted by the image's AIS scores (red: helpful channels, blue: harmful). "
              "<b>Direction</b>: weighted by &minus;&Delta;y (red: raises realism, blue: lowers it). "
              "Grad-CAM uses its own [0, 1] scale.</p>",
              _img(figures["colour_scale"], "colour scale", "The signed colour scale."),
              _img(figures["gallery"], "heatmap gallery", "Best-, median- and worst-predicted images.")]
    for group, panels in gallery_panels.items():
        what = f"{group}-predicted" if group in GALLERY_GROUPS else f"{group} predicted realism"
        for image_id, png in panels:
            parts.append(_img(png, f"{group}: {image_id}", f"{what}: {image_id}"))

    # Agreement
    agreement = maps["agreement"]
    metric_rows = [[name, block["n"], block["mean"], block["median"]]
                   for name, block in agreement.items() if isinstance(block, Mapping)]
    parts += ['<h2 id="agreement">Agreement between AIS and Grad-CAM</h2>',
              "<p>Per image, |AIS| against Grad-CAM as saliency benchmarks define them: CC (Pearson), "
              "SIM (histogram intersection of the normalised maps) and KLD (Kullback-Leibler divergence, "
              "lower is closer).</p>",
              _table(["metric", "images", "mean", "median"], metric_rows),
              _img(figures["agreement"], "agreement", "Distribution over images; orange: median.")]

    # Localisation
    loc = maps["localization"]
    parts.append('<h2 id="localization">Localisation (demo masks)</h2>')
    aucs = [[k, loc.get(k)] for k in LOCALIZATION_AUCS if k in loc]
    if any(v is not None for _, v in aucs):
        parts += ["<p>Area under the ROC curve of each map's pixels against the ground-truth regions "
                  "(see the README for which map and which mask each key uses).</p>",
                  _table(["key", "AUC"], aucs)]
    else:
        parts.append(f"<p>No ground-truth masks in this data set: {_fmt(loc.get('reason', 'not computed'))}.</p>")

    # Files
    files = [("manifest", inputs.manifest), ("rejected rows", inputs.rejected), ("predictions", inputs.predictions),
             ("metrics", inputs.metrics), ("image-channel scores", inputs.scores),
             ("data-set-level channel scores", inputs.channels), ("fusion summary", inputs.fusion_summary),
             ("per-image heatmap figures", inputs.agreement), ("localisation", inputs.localization),
             ("top channel crops", inputs.crops), ("summary.json", str(page_dir / "summary.json"))]
    parts += ['<h2 id="files">Files</h2><ul>']
    parts += [f"<li>{html.escape(label)}: {_link(path, page_dir)}</li>" for label, path in files]
    parts += ["</ul></body></html>"]
    return "\n".join(parts)


def _panel_for(agreement: pd.DataFrame, image_id: str, panels: Sequence[str]) -> bytes | None:
    row = agreement.loc[agreement["image_id"] == image_id]
    if row.empty:
        return None
    shard, stem = int(row["shard"].iloc[0]), str(row["file_stem"].iloc[0])
    for folder in panels:
        candidate = Path(folder) / f"{stem}.png"
        if Path(folder).name == "panels" and Path(folder).parent.name == f"shard-{shard}" and candidate.is_file():
            return candidate.read_bytes()
    return None


def build_report(
    inputs: ReportInputs,
    out_html: str,
    out_summary: str,
    figure_paths: Mapping[str, str] | None = None,
    gallery_per_group: int = 3,
    input_size: int | None = None,
) -> dict[str, Any]:
    """Write ``index.html`` and ``summary.json`` (and the figures as PNG files); returns the summary."""
    t0 = time.perf_counter()
    summary = summarize(inputs, gallery_per_group)
    manifest = pd.read_parquet(inputs.manifest)
    predictions = pd.read_parquet(inputs.predictions)
    channels = pd.read_parquet(inputs.channels)
    agreement = pd.read_parquet(inputs.agreement)
    metrics = _read_json(inputs.metrics)
    figures = {
        "scores": figure_scores(manifest),
        "predicted": figure_predicted(predictions, metrics),
        "channel_scores": figure_channel_scores(inputs.scores, channels),
        "agreement": figure_agreement(agreement),
        "colour_scale": figure_colour_scale(),
        "training_curve": Path(inputs.training_curve).read_bytes(),
        "gallery": Path(inputs.gallery).read_bytes(),
        "crops": Path(inputs.crops_figure).read_bytes(),
    }
    panels = {
        group: [(i, png) for i in ids if (png := _panel_for(agreement, i, inputs.panels)) is not None]
        for group, ids in summary["heatmaps"]["gallery"].items()
    }
    for name, path in (figure_paths or {}).items():
        write_bytes(path, figures[name])
    page_dir = Path(out_html).parent
    write_text(out_html, render_html(summary, figures, inputs, page_dir, panels))
    write_json(out_summary, summary)
    log.info("report written to %s in %.1f s", out_html, time.perf_counter() - t0)
    return summary
