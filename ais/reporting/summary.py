"""``summary.json``'s content: the report's key figures as plain JSON values.

:func:`summarize` is the whole summary, one block per part of the workflow
(run, data, training, fusion, top channel crops, heatmaps, uncertainty; ``classification`` for a
classification run and ``groups`` when images carry a group, :func:`task_blocks`). Wall time per
stage comes from the rules' benchmark files: per stage the number of jobs,
the sum of their seconds (compute) and the longest job (:func:`stage_times`).
The run block (git revision and library versions of the fine-tuning, the
config, the stage times) is the summary's provenance.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ais.fusion import QUADRANTS
from ais.reporting.data import ReportData
from ais.tables import LOCALIZATION_AUCS, SPLITS

logger = logging.getLogger(__name__)

#: Benchmark folders (under results/benchmarks) and the stage each one times, in workflow order.
STAGES = {
    "demo": "demo data",
    "data": "intake",
    "model": "fine-tune",
    "export": "ONNX export",
    "ablation": "ablation",
    "fusion": "fusion",
    "heatmaps": "heatmaps",
    "report": "report",
}

#: Channels listed per direction (helpful, harmful) in the summary.
N_TOP = 10
#: Most uncertain images (Monte-Carlo dropout) listed for review, with their panels.
N_REVIEW = 6


def summarize(data: ReportData) -> dict[str, Any]:
    """The report's key figures as plain JSON values (``summary.json``)."""
    return {
        "run": run_block(data),
        "data": data_block(data.manifest, data.rejected, data.split_notes),
        "training": training_block(data.metrics, data.predictions),
        "fusion": fusion_block(data.fusion, data.channels, data.scores["quadrant"]),
        "top_channel_crops": {
            "channels": sorted(int(c) for c in data.crops["channel"].unique()),
            "n_crops": int(len(data.crops)),
        },
        "heatmaps": heatmaps_block(data.agreement, data.localization, data.gallery),
        "uncertainty": uncertainty_block(data.metrics, data.predictions, data.agreement),
        **task_blocks(data),
    }


def task_blocks(data: ReportData) -> dict[str, Any]:
    """``classification`` (classification runs) and ``groups`` (images with a group): only when they apply.

    The regression summary without groups is unchanged by them.
    """
    from ais.reporting.classification import class_setup, classification_block
    from ais.reporting.groups import groups_block

    out: dict[str, Any] = {}
    setup = class_setup(data.config)
    if setup is not None:
        out["classification"] = classification_block(data.predictions, setup, data.agreement["image_id"].tolist())
        out["classification"]["explained_class_auc"] = data.localization.get("explained_class_auc")
    config = dict(data.config)
    n_boot = int((config.get("train") or {}).get("bootstrap", 1000))
    seed = int(config.get("seed", 0))
    block = groups_block(data.predictions, data.manifest, data.scores, data.agreement,
                         _group_metrics(config, setup, n_boot, seed), int((config.get("fusion") or {}).get(
                             "bootstrap", 1000)), seed, (config.get("data") or {}).get("group_column"))
    if block is not None:
        out["groups"] = block
    return out


def _group_metrics(config: Mapping[str, Any], setup: Any, n_boot: int, seed: int):
    """The task's test metrics of a group's labelled test rows of the predictions."""
    from ais.reporting.classification import probabilities
    from ais.tasks.classification import task_from_config

    task = task_from_config(config)  # configured with the classes and the explained class

    def metrics(rows: pd.DataFrame) -> Mapping[str, Any]:
        y = rows["y_true"].to_numpy(np.float64)
        pred = probabilities(rows, len(setup.classes)) if setup is not None else rows["y_pred"].to_numpy(np.float64)
        return task.test_metrics(y, pred, n_boot, seed)

    return metrics


def run_block(data: ReportData) -> dict[str, Any]:
    """Git revision and versions (those of the fine-tuning), the config and the wall time per stage."""
    stamped = data.metrics.get("provenance", {})
    return {
        "git_revision": stamped.get("git_revision"),
        "versions": stamped.get("versions"),
        "config": dict(data.config),
        "stages": stage_times(data.benchmarks),
    }


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


def data_block(manifest: pd.DataFrame, rejected: pd.DataFrame, split_notes: list[str] = ()) -> dict[str, Any]:
    """Images per split, labelled images and their scores, rejected rows and why, notes on the split."""
    counts = manifest["split"].value_counts()
    reasons = rejected["reason"].value_counts() if "reason" in rejected.columns else pd.Series(dtype=int)
    return {
        "n_images": int(len(manifest)),
        "per_split": {s: int(counts.get(s, 0)) for s in SPLITS},
        "n_labelled": int(manifest["y_true"].notna().sum()),
        "score": describe(manifest["y_true"]),
        "n_rejected": int(len(rejected)),
        "rejected_reasons": {str(k): int(v) for k, v in reasons.items()},
        "split_notes": list(split_notes),
    }


def training_block(metrics: Mapping[str, Any], predictions: pd.DataFrame) -> dict[str, Any]:
    """The model, the epochs, the test and validation metrics with their intervals."""
    test = predictions[(predictions["split"] == "test") & predictions["y_true"].notna()]
    return {
        "arch": metrics.get("provenance", {}).get("config", {}).get("model", {}).get("arch"),
        "device": metrics.get("device"),
        "best_epoch": metrics.get("best_epoch"),
        "epochs_run": metrics.get("epochs_run"),
        "stopped_early": metrics.get("stopped_early"),
        "test": _metric_block(metrics.get("test", {})),
        "val": _metric_block(metrics.get("val", {})),
        "n_test_predictions": int(len(test)),
    }


def fusion_block(fusion: Mapping[str, Any], channels: pd.DataFrame, quadrant: pd.Series) -> dict[str, Any]:
    """Fusion settings, image-channel pairs per quadrant, reliability and the top channels each way."""
    scored = channels[channels["mean_ais_score"].notna()]
    ranked = scored.sort_values(["mean_ais_score", "channel"], ascending=[False, True], kind="mergesort")
    pairs = quadrant_counts(quadrant)
    return {
        "scope": fusion.get("scope"),
        "magnitude": fusion.get("magnitude"),
        "n_pairs": int(sum(pairs.values())),
        "quadrants": pairs,
        "n_flipped": fusion.get("n_flipped", fusion.get("flipped")),
        "reliability": fusion.get("reliability"),
        "n_channels": int(len(channels)),
        "top_helpful": _top_channels(ranked.head(N_TOP)),
        "top_harmful": _top_channels(ranked[ranked["mean_ais_score"] < 0].iloc[::-1].head(N_TOP)),
    }


def quadrant_counts(quadrant: pd.Series) -> dict[str, int]:
    """Image-channel pairs per quadrant, from the ``quadrant`` column; an unknown label is an error."""
    counts = quadrant.value_counts()
    unknown = sorted(set(counts.index) - set(QUADRANTS))
    if unknown:
        raise ValueError(f"unknown quadrant labels {unknown}")
    return {q: int(counts.get(q, 0)) for q in QUADRANTS}


def heatmaps_block(agreement: pd.DataFrame, localization: Mapping[str, Any],
                   gallery: Mapping[str, list[str]]) -> dict[str, Any]:
    """Agreement metrics over images, the localisation AUCs (first) and the rest, the gallery's images."""
    agreement_out: dict[str, Any] = {"n_images": int(len(agreement))}
    for column in [c for c in agreement.columns if c.split("_", 1)[0] in ("cc", "sim", "kld")]:
        agreement_out[column] = describe(agreement[column])
    aucs = {k: localization.get(k) for k in LOCALIZATION_AUCS if k in localization}
    return {
        "agreement": agreement_out,
        "localization": aucs | {k: v for k, v in localization.items() if k not in LOCALIZATION_AUCS},
        "gallery": {group: list(ids) for group, ids in gallery.items()},
    }


def uncertainty_block(metrics: Mapping[str, Any], predictions: pd.DataFrame, agreement: pd.DataFrame,
                      n_review: int = N_REVIEW) -> dict[str, Any]:
    """Monte-Carlo dropout: what was done (or why not), SRCC(std, |error|) on the test split, the review list.

    The review list holds the ``n_review`` most uncertain images (largest
    ``mc_std``, ties by image id), among those with heatmap panels when any
    has a spread (their panels are shown), else among all images.
    """
    from ais.uncertainty import spearman

    info = dict(metrics.get("uncertainty") or {"status": "not recorded", "reason": "metrics.json has no "
                                                "uncertainty block: the model was trained before Monte-Carlo dropout"})
    out: dict[str, Any] = {"status": info.get("status"), "reason": info.get("reason"),
                           "mc_samples": info.get("mc_samples", 0), "dropout_layers": info.get("dropout_layers", [])}
    if "mc_std" not in predictions or predictions["mc_std"].notna().sum() == 0:
        return out | {"n_images": 0, "review": []}
    sampled = predictions[predictions["mc_std"].notna()].copy()
    sampled["abs_error"] = (sampled["y_pred"] - sampled["y_true"]).abs()
    test = sampled[(sampled["split"] == "test") & sampled["abs_error"].notna()]
    pool = sampled[sampled["image_id"].isin(agreement["image_id"])] if len(agreement) else sampled.iloc[:0]
    pool = pool if len(pool) else sampled
    review = pool.sort_values(["mc_std", "image_id"], ascending=[False, True], kind="mergesort").head(n_review)
    return out | {
        "n_images": int(len(sampled)),
        "std": describe(sampled["mc_std"]),
        "test_n": int(len(test)),
        "test_srcc_std_abs_error": spearman(test["mc_std"], test["abs_error"]),
        "review": [{"image_id": str(r.image_id), "split": str(r.split), "y_true": _num(r.y_true),
                    "y_pred": float(r.y_pred), "mc_mean": _num(r.mc_mean), "mc_std": float(r.mc_std),
                    "abs_error": _num(r.abs_error)} for r in review.itertuples()],
    }


def describe(values: pd.Series) -> dict[str, Any]:
    """Count, mean, sd, min, median and max of the non-missing values (``None`` each when there are none)."""
    values = values.dropna().astype(float)
    if values.empty:
        return {"n": 0, "mean": None, "sd": None, "min": None, "median": None, "max": None}
    return {
        "n": int(len(values)), "mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "min": float(values.min()), "median": float(values.median()), "max": float(values.max()),
    }


def _metric_block(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: {"value": m.get("value"), "ci95": m.get("ci95")}
        for name, m in metrics.items() if isinstance(m, Mapping) and "value" in m
    }


def _top_channels(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {"channel": int(r.channel), "mean_ais_score": float(r.mean_ais_score),
         "ci95": [_num(r.mean_ais_score_lo), _num(r.mean_ais_score_hi)],
         "fraction_helpful": _num(r.fraction_helpful), "mean_delta_prediction": _num(r.mean_delta_prediction)}
        for r in frame.itertuples()
    ]


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(out) else out
