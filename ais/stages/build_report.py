"""Rule build_report: ``results/report/index.html`` (one self-contained page) and ``summary.json``.

The stage reads the workflow's outputs into a :class:`ais.reporting.data.ReportData`,
has :mod:`ais.reporting` summarise, draw and lay them out, and writes the
page, the summary and the figures (also as PNG files for Snakemake's own
report). The gallery's images come from the gallery stage's
``gallery.json``, so the report's panels are the gallery figure's images.

``summary.json``'s provenance is its ``run`` block: the git revision and
library versions stamped into ``metrics.json`` by the fine-tuning, the
config, and the wall time per stage from the rules' ``benchmark:`` files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ais.io import read_metadata, write_bytes, write_json, write_text
from ais.reporting.classification import draw_task_figures
from ais.reporting.data import ReportData
from ais.reporting.figures import draw_figures
from ais.reporting.page import render_page
from ais.reporting.validity import draw_validity_figures
from ais.reporting.summary import summarize
from ais.stages import job
from ais.tasks.classification import task_from_config

logger = logging.getLogger(__name__)

#: The gallery's group names in the figure's order (labelled: by error; unlabelled: by prediction).
GROUP_ORDER = ("best", "highest", "median", "worst", "lowest")


@dataclass
class ReportInputs:
    """Paths of everything the report summarises (relative paths resolve from the working directory).

    ``gallery`` is the gallery figure (PNG), ``gallery_selection`` its
    images by group (``gallery.json``), ``panels`` the per-shard panel
    folders, ``benchmarks`` the folder of the rules' benchmark files.
    """

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
    gallery_selection: str
    crops: str
    crops_figure: str
    panels: Sequence[str] = ()
    benchmarks: str | None = None
    validity: str | None = None  # results/validity/summary.json (rule validity); its section is left out without it
    faithfulness: str | None = None  # results/validity/faithfulness.parquet: the curves of that section
    config: Mapping[str, Any] = field(default_factory=dict)


def run(inputs: ReportInputs, out_html: str, out_summary: str,
        figure_paths: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Write ``index.html`` and ``summary.json`` (and the figures named in ``figure_paths``); returns the summary."""
    t0 = time.perf_counter()
    data = read_inputs(inputs)
    words = task_from_config(data.config).words  # a classification task's words name its classes
    summary = summarize(data)
    summary["validity"] = _read_json(inputs.validity) if inputs.validity else None  # "Which map to trust"
    figures = draw_figures(data, words) | read_figures(inputs) | draw_task_figures(data.predictions, data.config, words)
    figures |= draw_validity_figures(pd.read_parquet(inputs.faithfulness) if inputs.faithfulness else None,
                                     summary["validity"])
    panels = read_panels(data.agreement, data.gallery, inputs.panels)
    review = read_panels(data.agreement, {"uncertain": [r["image_id"] for r in summary["uncertainty"]["review"]]},
                         inputs.panels)
    for name, path in (figure_paths or {}).items():
        write_bytes(path, figures[name])
    page_dir = Path(out_html).parent
    write_text(out_html, render_page(summary, figures, panels, linked_files(inputs, page_dir), page_dir, words,
                                     review, read_task_panels(summary, data.agreement, inputs.panels),
                                     sources={"gallery": inputs.gallery, "crops": inputs.crops_figure,
                                              "training_curve": inputs.training_curve, **(figure_paths or {})}))
    write_json(out_summary, summary)
    logger.info("report written to %s in %.1f s", out_html, time.perf_counter() - t0)
    return summary


def main(smk: Any) -> None:
    """The rule's script: Snakemake's input, output and params onto :func:`run`."""
    with job(smk):
        inp, out, params = smk.input, smk.output, smk.params
        inputs = ReportInputs(
            manifest=inp.manifest, rejected=inp.rejected, metrics=inp.metrics, history=inp.history,
            predictions=inp.predictions, training_curve=inp.training_curve, scores=inp.scores,
            channels=inp.channels, fusion_summary=inp.fusion_summary, agreement=inp.agreement,
            localization=inp.localization, gallery=inp.gallery, gallery_selection=inp.gallery_selection,
            crops=inp.crops, crops_figure=inp.crops_figure, panels=list(inp.panels),
            benchmarks=params.benchmarks, config=dict(params.config),
            validity=getattr(inp, "validity", None), faithfulness=getattr(inp, "faithfulness", None),
        )
        figure_paths = {name: getattr(out, name) for name in ("scores", "predicted", "channel_scores", "agreement")}
        run(inputs, out.html, out.summary, figure_paths=figure_paths)


def read_inputs(inputs: ReportInputs) -> ReportData:
    """Every table and value the summary, the figures and the page need."""
    manifest = pd.read_parquet(inputs.manifest)
    return ReportData(
        manifest=manifest,
        split_notes=list(read_metadata(inputs.manifest).get("split_notes") or []),
        rejected=read_rejected(inputs.rejected),
        metrics=_read_json(inputs.metrics),
        predictions=pd.read_parquet(inputs.predictions),
        scores=pd.read_parquet(inputs.scores, columns=score_columns(manifest)),
        channels=pd.read_parquet(inputs.channels),
        fusion=_read_json(inputs.fusion_summary),
        agreement=pd.read_parquet(inputs.agreement),
        localization=_read_json(inputs.localization),
        crops=pd.read_parquet(inputs.crops, columns=["channel"]),
        benchmarks=read_benchmarks(inputs.benchmarks),
        gallery=read_gallery(inputs.gallery_selection),
        config=dict(inputs.config),
    )


def score_columns(manifest: pd.DataFrame) -> list[str]:
    """The fusion table's columns the report reads: per-group unit scores need the image, unit and direction."""
    grouped = "group" in manifest.columns and manifest["group"].notna().any()
    return ["quadrant", "ais_score"] + (["image_id", "channel", "direction"] if grouped else [])


def read_task_panels(summary: Mapping[str, Any], agreement: pd.DataFrame,
                     panel_dirs: Sequence[str]) -> dict[str, Any]:
    """The panels of the classification outcome galleries and of each group's gallery (when the summary has them)."""
    out: dict[str, Any] = {}
    if "classification" in summary:
        out["outcomes"] = read_panels(agreement, summary["classification"]["outcomes"]["gallery"], panel_dirs)
    if "groups" in summary:
        out["groups"] = {name: read_panels(agreement, chosen, panel_dirs)
                         for name, chosen in summary["groups"]["gallery"].items()}
    return out


def read_benchmarks(folder: str | os.PathLike | None) -> pd.DataFrame:
    """One row per benchmark file: ``stage``, ``job`` (path below the folder), ``seconds``, ``max_rss_mb``."""
    rows = []
    root = Path(folder) if folder else None
    for path in sorted(root.rglob("*.tsv")) if root and root.is_dir() else []:
        try:
            bench = pd.read_csv(path, sep="\t")
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
            logger.warning("benchmark file %s unreadable (%s); left out of the wall times", path, exc)
            continue
        if bench.empty or "s" not in bench.columns:
            continue
        rel = path.relative_to(root)
        rss = pd.to_numeric(bench.get("max_rss"), errors="coerce")
        rows.append({
            "stage": rel.parts[0] if len(rel.parts) > 1 else rel.stem,
            "job": rel.as_posix(),
            "seconds": float(bench["s"].iloc[-1]),
            "max_rss_mb": float(rss.iloc[-1]) if rss is not None and rss.notna().any() else None,
        })
    return pd.DataFrame(rows, columns=["stage", "job", "seconds", "max_rss_mb"])


def read_rejected(path: str) -> pd.DataFrame:
    """The rejected rows written by intake (empty table when none, or when the file is empty)."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def read_gallery(path: str) -> dict[str, list[str]]:
    """``gallery.json``'s images by group, groups in the gallery figure's order (unknown names last)."""
    groups = _read_json(path)["groups"]
    rank = {name: i for i, name in enumerate(GROUP_ORDER)}
    ordered = sorted(groups, key=lambda name: rank.get(name, len(rank)))
    return {name: [str(i) for i in groups[name]] for name in ordered}


def read_figures(inputs: ReportInputs) -> dict[str, bytes]:
    """The figures other stages drew: the training curve, the gallery, the top channels' crops."""
    return {
        "training_curve": Path(inputs.training_curve).read_bytes(),
        "gallery": Path(inputs.gallery).read_bytes(),
        "crops": Path(inputs.crops_figure).read_bytes(),
    }


def read_panels(agreement: pd.DataFrame, gallery: Mapping[str, list[str]],
                panel_dirs: Sequence[str]) -> dict[str, list[tuple[str, bytes]]]:
    """The per-image panel (PNG) of each gallery image by group; images without one are left out."""
    return {
        group: [(i, png) for i in ids if (png := _panel_for(agreement, i, panel_dirs)) is not None]
        for group, ids in gallery.items()
    }


def _panel_for(agreement: pd.DataFrame, image_id: str, panel_dirs: Sequence[str]) -> bytes | None:
    row = agreement.loc[agreement["image_id"] == image_id]
    if row.empty:
        return None
    shard, stem = int(row["shard"].iloc[0]), str(row["file_stem"].iloc[0])
    for folder in panel_dirs:
        candidate = Path(folder) / f"{stem}.png"
        if Path(folder).name == "panels" and Path(folder).parent.name == f"shard-{shard}" and candidate.is_file():
            return candidate.read_bytes()
    return None


def linked_files(inputs: ReportInputs, page_dir: Path) -> dict[str, str]:
    """The tables the page links, by label, in the page's order."""
    return {
        "manifest": inputs.manifest, "rejected rows": inputs.rejected, "predictions": inputs.predictions,
        "metrics": inputs.metrics, "image-channel scores": inputs.scores,
        "data-set-level channel scores": inputs.channels, "fusion summary": inputs.fusion_summary,
        "per-image heatmap figures": inputs.agreement, "localisation": inputs.localization,
        "top channel crops": inputs.crops, "summary.json": str(page_dir / "summary.json"),
    }


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
