"""Per-group figures of the report (``data.group_column``), for both tasks.

A data set may mix images of several kinds (real photographs and the
outputs of several generators, each with a realism score or a label); the
``group`` column of the manifest and of the predictions names each image's
kind. Per group, as well as overall:

- :func:`group_test_metrics`: the task's test metrics on the group's labelled
  test images (the function the caller passes, e.g. the task's ``test_metrics``);
- :func:`group_unit_scores`: data-set-level unit scores (the mean AIS score
  and the mean direction -Δy per unit over the group's labelled images, with
  bootstrap 95 % intervals of the mean AIS score, :func:`ais.fusion.bootstrap_means`),
  the top units each way and the rank agreement with the overall scores;
- :func:`group_quadrants`: image-unit pairs per quadrant;
- :func:`group_galleries`: the best-, median- and worst-predicted images of
  the group among those with panels (:func:`ais.map_figures.gallery_selection`).

A group with fewer than :data:`MIN_GROUP_IMAGES` labelled images (test
images for the metrics, ablated images for the unit scores) gets no values
and no intervals, only its count and the reason: a bootstrap interval over
fewer than ten images is too wide and too unstable to read, and a rank of
units from a handful of images is noise.
"""

from __future__ import annotations

import html
import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ais.fusion import QUADRANTS, bootstrap_means
from ais.map_figures import GALLERY_GROUPS, gallery_selection
from ais.reporting.markup import ci, fmt, img, table
from ais.tasks import TaskWords

logger = logging.getLogger(__name__)

#: Fewest labelled images of a group for its metrics and unit scores (and their intervals).
MIN_GROUP_IMAGES = 10
#: Units listed per direction (helpful, harmful) per group.
N_TOP_UNITS = 5
#: Images per gallery group per image group.
N_GALLERY = 2

Panels = Mapping[str, Sequence[tuple[str, bytes]]]


def group_names(frame: pd.DataFrame) -> list[str]:
    """The sorted distinct values of ``frame``'s ``group`` column (none: no column, or all null)."""
    if "group" not in frame.columns:
        return []
    return sorted(str(g) for g in frame["group"].dropna().unique())


def too_few(n: int, what: str) -> str:
    """The note a group with ``n`` images gets instead of values and intervals."""
    return (f"too few {what} ({n} < {MIN_GROUP_IMAGES}): no values or 95 % intervals are shown for fewer than "
            f"{MIN_GROUP_IMAGES}, whose bootstrap intervals would be too wide and unstable to read")


def group_test_metrics(predictions: pd.DataFrame,
                       metrics: Callable[[pd.DataFrame], Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per group: ``n_test`` (labelled test images) and ``metrics(rows)`` of those rows, or the ``reason`` why not.

    ``metrics`` takes the group's labelled test rows of ``predictions`` and
    returns the task's test metrics (``{name: {"value", "ci95", ...}}``).
    """
    test = predictions[(predictions["split"] == "test") & predictions["y_true"].notna()]
    out = {}
    for name in group_names(predictions):
        rows = test[test["group"] == name]
        n = int(len(rows))
        out[name] = ({"n_test": n, "metrics": None, "reason": too_few(n, "labelled test images")}
                     if n < MIN_GROUP_IMAGES else {"n_test": n, "metrics": _values(metrics(rows)), "reason": None})
    return out


def _values(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics that are ``{"value", "ci95"}`` blocks, as such (nested tables are left to the overall block)."""
    return {k: {"value": m.get("value"), "ci95": m.get("ci95")} for k, m in metrics.items()
            if isinstance(m, Mapping) and "value" in m}


def group_of(manifest: pd.DataFrame) -> pd.Series:
    """``image_id -> group`` of the manifest's images that have a group."""
    if "group" not in manifest.columns:
        return pd.Series(dtype=object)
    rows = manifest[manifest["group"].notna()]
    return pd.Series(rows["group"].astype(str).to_numpy(), index=rows["image_id"].astype(str).to_numpy())


def group_unit_scores(scores: pd.DataFrame, groups: pd.Series, n_boot: int, seed: int,
                      n_top: int = N_TOP_UNITS) -> dict[str, dict[str, Any]]:
    """Per group: data-set-level unit scores over its labelled images (``scores``: the fusion table's rows).

    ``scores`` needs ``image_id``, ``channel``, ``ais_score`` (null when
    unlabelled) and ``direction``; ``groups`` maps image ids to groups
    (:func:`group_of`). Per group: ``n_images`` (labelled, ablated),
    ``top_helpful`` / ``top_harmful`` (unit, mean AIS score, 95 % interval,
    mean direction), ``spearman_with_overall`` (the group's mean AIS
    scores against all labelled images', across units).
    """
    labelled = scores[scores["ais_score"].notna()]
    overall = labelled.groupby("channel", sort=True)["ais_score"].mean()
    grouped = labelled.assign(group=labelled["image_id"].astype(str).map(groups))
    out = {}
    for name in sorted(set(groups.astype(str))):
        part = grouped[grouped["group"] == name]
        n = int(part["image_id"].nunique())
        if n < MIN_GROUP_IMAGES:
            out[name] = {"n_images": n, "reason": too_few(n, "labelled ablated images")}
            continue
        out[name] = _unit_block(part, overall, n_boot, np.random.default_rng([seed, 3, _stable(name)]), n_top)
    return out


def _stable(name: str) -> int:
    """A seed component from a group's name, the same in every process (``hash`` is salted)."""
    return int.from_bytes(name.encode("utf-8")[:8].ljust(8, b"\0"), "little")


def _unit_block(part: pd.DataFrame, overall: pd.Series, n_boot: int, rng: np.random.Generator,
                n_top: int) -> dict[str, Any]:
    """One group's unit scores: means, bootstrap intervals over its images, the top units each way."""
    ais = part.pivot(index="image_id", columns="channel", values="ais_score").sort_index(axis=1)
    direction = part.pivot(index="image_id", columns="channel", values="direction").reindex(columns=ais.columns)
    lo, hi = bootstrap_means({"ais": ais.to_numpy(np.float64)}, n_boot, rng)["ais"]
    table_ = pd.DataFrame({"channel": ais.columns.to_numpy(np.int64), "mean_ais_score": ais.mean().to_numpy(),
                           "lo": lo, "hi": hi, "mean_direction": direction.mean().to_numpy()})
    ranked = table_.sort_values(["mean_ais_score", "channel"], ascending=[False, True], kind="mergesort")
    from scipy.stats import spearmanr

    joined = overall.reindex(ais.columns).to_numpy(np.float64)
    rho = spearmanr(table_["mean_ais_score"], joined).statistic if len(table_) > 2 else float("nan")
    return {"n_images": int(len(ais)), "reason": None,
            "spearman_with_overall": None if not np.isfinite(rho) else float(rho),
            "top_helpful": _units(ranked[ranked["mean_ais_score"] > 0].head(n_top)),
            "top_harmful": _units(ranked[ranked["mean_ais_score"] < 0].iloc[::-1].head(n_top))}


def _units(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{"channel": int(r.channel), "mean_ais_score": float(r.mean_ais_score),
             "ci95": [None if np.isnan(r.lo) else float(r.lo), None if np.isnan(r.hi) else float(r.hi)],
             "mean_direction": None if np.isnan(r.mean_direction) else float(r.mean_direction)}
            for r in frame.itertuples()]


def group_quadrants(scores: pd.DataFrame, groups: pd.Series) -> dict[str, dict[str, int]]:
    """Per group: image-unit pairs per quadrant (``scores``: ``image_id``, ``quadrant``)."""
    named = scores["image_id"].astype(str).map(groups)
    out = {}
    for name in sorted(set(groups.astype(str))):
        counts = scores.loc[(named == name).to_numpy(), "quadrant"].value_counts()
        out[name] = {q: int(counts.get(q, 0)) for q in QUADRANTS}
    return out


def group_galleries(agreement: pd.DataFrame, groups: pd.Series, n: int = N_GALLERY) -> dict[str, dict[str, list[str]]]:
    """Per group: its images with panels by gallery group (best, median, worst; unlabelled: by prediction)."""
    named = agreement["image_id"].astype(str).map(groups)
    out = {}
    for name in sorted(set(groups.astype(str))):
        chosen: dict[str, list[str]] = {}
        for gallery_group, image_id in gallery_selection(agreement[(named == name).to_numpy()], n):
            chosen.setdefault(gallery_group, []).append(str(image_id))
        out[name] = chosen
    return out


# --------------------------------------------------------------------------- summary.json and the page


def groups_block(predictions: pd.DataFrame, manifest: pd.DataFrame, scores: pd.DataFrame, agreement: pd.DataFrame,
                 metrics: Callable[[pd.DataFrame], Mapping[str, Any]], n_boot: int, seed: int,
                 column: str | None = None) -> dict[str, Any] | None:
    """``summary.json``'s ``groups`` (``None`` when no image has a group).

    ``scores`` is the fusion table (``image_id``, ``channel``, ``ais_score``,
    ``direction``, ``quadrant``); ``metrics`` the task's test metrics of a
    group's labelled test rows (see :func:`group_test_metrics`).
    """
    groups = group_of(manifest)
    if groups.empty and not group_names(predictions):
        return None
    if groups.empty:  # only the predictions carry the groups
        groups = group_of(predictions)
    return {
        "column": column, "groups": sorted(set(groups.astype(str))), "min_images": MIN_GROUP_IMAGES,
        "n_images": {name: int((groups == name).sum()) for name in sorted(set(groups.astype(str)))},
        "test_metrics": group_test_metrics(predictions, metrics),
        "unit_scores": group_unit_scores(scores, groups, n_boot, seed),
        "quadrants": group_quadrants(scores, groups),
        "gallery": group_galleries(agreement, groups),
    }


def groups_section(block: Mapping[str, Any] | None, overall: Mapping[str, Any], panels: Mapping[str, Panels],
                   words: TaskWords) -> list[str]:
    """The page's per-group section (nothing without groups); ``overall`` is the summary's test metrics."""
    if not block:
        return []
    names = block["groups"]
    metrics = block["test_metrics"]
    parts = ['<h2 id="groups">Groups</h2>',
             f"<p>Images per group (column {fmt(block.get('column'))}): "
             + ", ".join(f"{html.escape(n)} {fmt(block['n_images'][n])}" for n in names)
             + f". Groups with fewer than {block['min_images']} labelled images show their count and why no "
             "value is given, not an interval they cannot have.</p>",
             table(["metric", "all"] + names, _metric_rows(overall, metrics, names))]
    parts += [f"<p class=\"muted\">{html.escape(n)}: {html.escape(str(m['reason']))} ({m['n_test']} images).</p>"
              for n, m in ((n, metrics.get(n, {})) for n in names) if m.get("reason")]
    parts += ["<p>Image-unit pairs per quadrant and group:</p>",
              table(["group", *QUADRANTS], [[n, *[block["quadrants"][n][q] for q in QUADRANTS]] for n in names])]
    parts += _unit_parts(block["unit_scores"], names, words)
    for name in names:
        for gallery_group, shown in (panels.get(name) or {}).items():
            what = f"{gallery_group}-predicted" if gallery_group in GALLERY_GROUPS else f"{gallery_group} {words.predicted}"
            parts += [img(png, f"{name} {gallery_group}: {image_id}", f"{name}, {what}: {image_id}")
                      for image_id, png in shown]
    return parts


def _metric_rows(overall: Mapping[str, Any], metrics: Mapping[str, Any], names: Sequence[str]) -> list[list[Any]]:
    """One row per overall metric: value and interval overall and per group ('–' where a group has none)."""
    def cell(block: Mapping[str, Any] | None) -> str:
        if not block or block.get("value") is None:
            return "–"
        return f"{block['value']:.3f} ({ci(block).replace('&ndash;', '–')})"

    return [[name, cell(block)] + [cell(((metrics.get(g) or {}).get("metrics") or {}).get(name)) for g in names]
            for name, block in overall.items()]


def _unit_parts(units: Mapping[str, Any], names: Sequence[str], words: TaskWords) -> list[str]:
    rows = []
    for name in names:
        block = units.get(name) or {}
        if block.get("reason"):
            rows.append([name, str(block["reason"]), "–", "–", "–", "–"])
            continue
        for kind in ("top_helpful", "top_harmful"):
            rows += [[name, kind.split("_")[1], u["channel"], u["mean_ais_score"], ci(u), u["mean_direction"]]
                     for u in block.get(kind, [])]
    return [f"<p>Data-set-level unit scores per group (labelled images of the group; bootstrap 95 % intervals over "
            f"its images; mean direction &gt; 0: the unit {html.escape(words.raises)}). Spearman correlation of each "
            "group's unit scores with all images': "
            + ", ".join(f"{html.escape(n)} {fmt((units.get(n) or {}).get('spearman_with_overall'))}" for n in names)
            + ".</p>",
            table(["group", "kind", "unit", "mean AIS score", "95 % interval", "mean direction"], rows)]


def task_sections(summary: Mapping[str, Any], figures: Mapping[str, bytes], panels: Mapping[str, Any],
                  words: TaskWords) -> list[str]:
    """The page's sections of a classification run and of grouped data (nothing for neither).

    ``panels``: ``"outcomes"`` -> outcome key -> panels; ``"groups"`` -> group -> gallery group -> panels.
    """
    from ais.reporting.classification import classification_section

    return (classification_section(summary.get("classification"), figures, panels.get("outcomes") or {}, words)
            + groups_section(summary.get("groups"), (summary.get("training") or {}).get("test") or {},
                             panels.get("groups") or {}, words))
