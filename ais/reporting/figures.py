"""The report's matplotlib figures, each returned as PNG bytes.

The stage embeds them in the page and also writes them as PNG files for
Snakemake's own report. Axis labels and the colour scale's legend use the
task's words (:class:`ais.tasks.TaskWords`).
"""

from __future__ import annotations

import io
import logging
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ais.reporting.data import ReportData
from ais.tables import LABELLED_SPLITS
from ais.tasks import TaskWords

logger = logging.getLogger(__name__)

SPLIT_COLOURS = {"train": "#9aa5b1", "val": "#e69f00", "test": "#0072b2", "unlabelled": "#cc79a7"}


def draw_figures(data: ReportData, words: TaskWords) -> dict[str, bytes]:
    """Every figure the report draws itself, by name (the page's and Snakemake's report's names).

    ``uncertainty`` only when Monte-Carlo dropout sampled the predictions.
    """
    figures = {
        "scores": figure_scores(data.manifest, words),
        "predicted": figure_predicted(data.predictions, data.metrics, words),
        "channel_scores": figure_channel_scores(data.scores["ais_score"].to_numpy(dtype=float), data.channels),
        "agreement": figure_agreement(data.agreement),
        "colour_scale": figure_colour_scale(words),
    }
    if "mc_std" in data.predictions and data.predictions["mc_std"].notna().any():
        figures["uncertainty"] = figure_uncertainty(data.predictions, words)
    return figures


def figure_uncertainty(predictions: pd.DataFrame, words: TaskWords) -> bytes:
    """Monte-Carlo dropout standard deviation against the absolute error, per labelled split, SRCC of test."""
    from ais.uncertainty import spearman

    fig = _figure(4.6, 3.6)
    ax = fig.add_subplot()
    rows = predictions[predictions["mc_std"].notna() & predictions["y_true"].notna()]
    error = (rows["y_pred"] - rows["y_true"]).abs()
    for split in LABELLED_SPLITS:
        sel = (rows["split"] == split).to_numpy()
        if sel.any():
            ax.scatter(error[sel], rows["mc_std"][sel], s=10, alpha=0.7, color=SPLIT_COLOURS[split],
                       label=f"{split} ({int(sel.sum())})", linewidths=0)
    test = (rows["split"] == "test").to_numpy()
    rho = spearman(rows["mc_std"][test], error[test])
    ax.set_title(f"test SRCC(std, |error|) = {rho:.3f}" if rho is not None else "test SRCC: n/a", fontsize=9)
    ax.set_xlabel(f"|{words.predicted} − {words.true}|")
    ax.set_ylabel("MC dropout standard deviation")
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def figure_scores(manifest: pd.DataFrame, words: TaskWords) -> bytes:
    """Histogram of the scores per split."""
    fig = _figure(5.5, 3.0)
    ax = fig.add_subplot()
    labelled = manifest[manifest["y_true"].notna()]
    if labelled.empty:
        ax.text(0.5, 0.5, "no labelled images", ha="center", va="center", transform=ax.transAxes)
    else:
        bins = np.histogram_bin_edges(labelled["y_true"].to_numpy(float), bins=30)
        for split in LABELLED_SPLITS:
            values = labelled.loc[labelled["split"] == split, "y_true"].to_numpy(float)
            if len(values):
                ax.hist(values, bins=bins, histtype="stepfilled", alpha=0.55, label=f"{split} ({len(values)})",
                        color=SPLIT_COLOURS[split])
        ax.legend(fontsize=8, frameon=False)
    ax.set_xlabel(f"{words.score} (y_true)")
    ax.set_ylabel("images")
    return _png(fig)


def figure_predicted(predictions: pd.DataFrame, metrics: Mapping[str, Any], words: TaskWords) -> bytes:
    """Predicted against true values, per split, with the identity line and the test SRCC as title."""
    fig = _figure(4.2, 4.0)
    ax = fig.add_subplot()
    labelled = predictions[predictions["y_true"].notna()]
    for split in LABELLED_SPLITS:
        part = labelled[labelled["split"] == split]
        if len(part):
            ax.scatter(part["y_true"], part["y_pred"], s=9 if split == "test" else 5, alpha=0.8 if split == "test" else 0.35,
                       color=SPLIT_COLOURS[split], label=split, linewidths=0)
    if len(labelled):
        lo = float(min(labelled["y_true"].min(), labelled["y_pred"].min()))
        hi = float(max(labelled["y_true"].max(), labelled["y_pred"].max()))
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--")
    title = _srcc_title(metrics.get("test", {}).get("srcc", {}))
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xlabel(words.true)
    ax.set_ylabel(words.predicted)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def figure_channel_scores(scores: np.ndarray, channels: pd.DataFrame) -> bytes:
    """Left: distribution of the image-channel AIS scores. Right: data-set-level scores per channel with 95 % CIs."""
    scores = scores[~np.isnan(scores)]
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
    """Per-image CC, SIM and KLD between |AIS| and Grad-CAM, the median marked."""
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


def figure_colour_scale(words: TaskWords) -> bytes:
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
    bar.set_label(f"blue: {words.lowers} (or harmful)    0: no effect    red: {words.raises} (or helpful)", fontsize=7)
    return _png(fig)


def _srcc_title(srcc: Mapping[str, Any]) -> str | None:
    if srcc.get("value") is None:
        return None
    ci = srcc.get("ci95") or [None, None]
    ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if None not in ci else ""
    return f"test SRCC {srcc['value']:.3f}{ci_text}"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


#: Embedded previews: at most this many pixels wide, JPEG at this quality (full-resolution files are linked).
PREVIEW_WIDTH = 1100
PREVIEW_QUALITY = 82
#: PNGs at most this large and wide are embedded as they are (line plots stay sharp and small).
KEEP_PNG_BYTES = 120_000


class Preview(bytes):
    """Image bytes to embed, with their MIME type and the full-resolution file they stand for.

    A ``bytes`` subclass, so code that only passes figures along keeps
    working; :func:`ais.reporting.markup.img` reads ``mime`` and ``href``
    (a link relative to the page, or ``None``).
    """

    mime: str = "image/png"
    href: str | None = None


def preview(png: bytes, href: str | None = None, max_width: int = PREVIEW_WIDTH,
            quality: int = PREVIEW_QUALITY) -> Preview:
    """A compressed preview of a PNG figure: JPEG at most ``max_width`` px wide, or the PNG if already small.

    The page's size then depends on how many figures it shows, not on the
    input size: a 1 MB panel of a 224 px photograph becomes ~100 KB.
    Already-compressed input (a :class:`Preview`) is returned with ``href`` set.
    """
    from PIL import Image

    if isinstance(png, Preview):
        return _tagged(bytes(png), png.mime, href or png.href)
    with Image.open(io.BytesIO(png)) as im:
        if len(png) <= KEEP_PNG_BYTES and im.width <= max_width:
            return _tagged(png, "image/png", href)
        rgb = im.convert("RGB")
    if rgb.width > max_width:
        rgb = rgb.resize((max_width, max(1, round(rgb.height * max_width / rgb.width))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=quality, optimize=True, progressive=True)
    if buf.tell() >= len(png):  # JPEG is no gain (flat figures): keep the PNG
        return _tagged(png, "image/png", href)
    return _tagged(buf.getvalue(), "image/jpeg", href)


def _tagged(data: bytes, mime: str, href: str | None) -> Preview:
    out = Preview(data)
    out.mime, out.href = mime, href
    return out
