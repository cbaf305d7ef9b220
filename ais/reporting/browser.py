"""The heatmap browser's content: one row per explained image, its columns and the page.

``results/report/browser.html`` opens from disk (``file://``, no server, no
network). Chromium forbids ``fetch`` of a local JSON file, so the data is a
script, ``browser-data.js``, assigning one columnar object to
``window.AIS_BROWSER``; the page's code and style (package data in
``ais/reporting/assets/``) are inlined into ``browser.html``.

The columnar object (:func:`browser_data`)::

    {"n": N, "title": str, "classes": [...] | null,
     "columns": [{"key", "label", "kind", "group", "visible", "values" | "levels"+"codes"}, ...],
     "shard": [N ints], "stem": [N strings or null (= the image id)],
     "panel_dirs": {shard: "relative/folder/"}, "thumb_dirs": {shard: "relative/folder/"},
     "top": [N [[channel, ais_score, delta_prediction], ...] helpful first, then harmful],
     "views": [{"name", "title", "scale", "description"}], "meta": {...}}

``kind`` is ``number`` (``values``: floats, null = missing), ``category``
(dictionary encoded: ``levels`` and ``codes``, -1 = missing) or ``text``
(``values``: strings). Which columns exist depends on the run: the
per-image figures table (agreement, localisation, scales), the predictions
(uncertainty, classes and probabilities), the validity stage's
faithfulness table; none but the figures table is required.
"""

from __future__ import annotations

import json
import logging
import re
from importlib import resources
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: Columns of the figures table that locate files rather than describe the image.
HIDDEN = ("shard", "path", "file_stem", "has_mask")
#: Category columns with more distinct values than this are shown as text.
MAX_LEVELS = 200
#: Significant digits of the numbers written to the data file.
DIGITS = 6

_LABELS = {
    "image_id": "image", "split": "split", "y_true": "true", "y_pred": "predicted", "abs_error": "|error|",
    "weights": "AIS weights", "mc_mean": "MC mean", "mc_std": "MC std", "mc_entropy": "MC entropy",
    "mc_mutual_information": "MC mutual information", "group": "group", "label": "true class",
    "pred_class": "predicted class", "raise_fraction": "raise-region fraction",
    "lower_fraction": "lower-region fraction",
}
_VISIBLE = ("image_id", "split", "label", "y_true", "pred_class", "y_pred", "abs_error", "mc_std", "mc_entropy",
            "group")


def merge_tables(figures: pd.DataFrame, predictions: pd.DataFrame | None = None,
                 faithfulness: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per explained image (the figures table's rows, in its order) with every per-image column.

    ``figures`` is ``agreement.parquet`` (:data:`ais.tables.HEATMAP_SCHEMA`);
    ``predictions`` adds the columns it has that ``figures`` lacks
    (uncertainty, class, probabilities, group); ``faithfulness`` (optional,
    the validity stage's) adds its numeric columns, pivoted to
    ``<column>_<method>`` when it has a ``method`` column. Images of
    ``figures`` missing from the others get nulls.
    """
    if "image_id" not in figures:
        raise ValueError("the figures table has no image_id column; rerun summarize_heatmaps")
    if figures["image_id"].duplicated().any():
        dup = figures.loc[figures["image_id"].duplicated(), "image_id"].iloc[0]
        raise ValueError(f"the figures table lists image {dup!r} twice; rerun summarize_heatmaps")
    table = figures.reset_index(drop=True)
    if predictions is not None:
        extra = [c for c in predictions.columns if c not in table.columns]
        if extra:
            table = table.merge(predictions[["image_id", *extra]].drop_duplicates("image_id"), on="image_id",
                                how="left")
    if faithfulness is not None and len(faithfulness):
        table = table.merge(faithfulness_columns(faithfulness), on="image_id", how="left")
    return table


def faithfulness_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Per image, the faithfulness figures as columns ``faith_<figure>_<map>[_<sign>]``.

    ``table`` is the validity stage's long table (one row per image, map and
    sign: :data:`ais.tables.FAITHFULNESS_SCHEMA`) or any per-image table;
    the figures are its ``*_auc`` and ``*_gain`` columns (every numeric
    column when it has none), spread over its ``map`` (else ``method``) and
    ``sign`` columns when present; duplicates are averaged.
    """
    if "image_id" not in table:
        raise ValueError("the faithfulness table has no image_id column; it is not per image")
    numeric = [c for c in table.columns if c not in ("image_id", "shard", "steps")
               and pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])]
    figures = [c for c in numeric if c.endswith("_auc") or c.endswith("_gain")] or numeric
    keys = [k for k in (("map" if "map" in table else "method"), "sign") if k in table]
    if not keys:
        wide = table[["image_id", *figures]].groupby("image_id", sort=False).mean()
        return wide.rename(columns=lambda c: f"faith_{c}").reset_index()
    wide = table.pivot_table(index="image_id", columns=keys, values=figures, aggfunc="mean", sort=False)
    wide.columns = ["_".join(["faith", *map(str, col)]) for col in wide.columns]
    return wide.reset_index()


def _faith_visible(key: str) -> bool:
    """Faithfulness columns shown by default: the gains over the random map, most-positive-first order."""
    return key.startswith("faith_") and "_gain_" in key and not key.endswith("_neg")


def column_group(key: str) -> str:
    """Which group of the column picker a column belongs to."""
    if key.startswith("faith_"):
        return "faithfulness"
    if key.startswith("mc_"):
        return "uncertainty"
    if re.match(r"(cc|sim|kld)_", key):
        return "agreement"
    if key.endswith("_auc") or key.endswith("_fraction"):
        return "localisation"
    if key.endswith("_scale"):
        return "scales"
    if key.startswith("prob_") or key in ("pred_class", "label", "y_true", "y_pred", "abs_error"):
        return "prediction"
    return "image"


def column_label(key: str, classes: Sequence[str] | None = None, explained: str | None = None) -> str:
    """The header text of a column (class names for ``prob_<k>`` and a classifier's truth and prediction)."""
    if classes and key in ("y_true", "y_pred"):
        return "true class" if key == "y_true" else f"P({explained or 'explained class'})"
    match = re.fullmatch(r"prob_(\d+)", key)
    if match and classes and int(match.group(1)) < len(classes):
        return f"P({classes[int(match.group(1))]})"
    if key.startswith("faith_"):
        return "faithfulness " + key[len("faith_"):]
    match = re.fullmatch(r"(cc|sim|kld)_(\w+)", key)
    if match:
        return f"{match.group(1).upper()} {_method_title(match.group(2))}"
    return _LABELS.get(key, key)


def _method_title(name: str) -> str:
    """A reference map's title: its view's (the views share the methods' names; no torch import), else the name."""
    from ais.views import get_view

    try:
        return get_view(name).title
    except (KeyError, ValueError):
        return name


def encode_column(series: pd.Series, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """One column for the data file: numbers (``values``), categories (``levels`` + ``codes``) or text.

    With ``classes``, ``pred_class`` (class indices) becomes a category of
    class names (:func:`browser_data` does the same for a classifier's ``y_true``).
    """
    key = str(series.name)
    if classes and key == "pred_class":
        series = class_names(series, classes)
    if pd.api.types.is_bool_dtype(series):
        series = series.map({True: "yes", False: "no"})
    if pd.api.types.is_numeric_dtype(series):
        return {"kind": "number", "values": _numbers(series.to_numpy(dtype=np.float64, na_value=np.nan))}
    text = series.astype("string")
    levels = sorted(text.dropna().unique().tolist())
    if key != "image_id" and len(levels) <= MAX_LEVELS:
        codes = pd.Categorical(text, categories=levels).codes
        return {"kind": "category", "levels": levels, "codes": codes.astype(int).tolist()}
    return {"kind": "text", "values": [None if pd.isna(v) else str(v) for v in text]}


def class_names(series: pd.Series, classes: Sequence[str]) -> pd.Series:
    """Class indices (floats or ints, NaN = none) as class names; an index outside ``classes`` is an error."""
    index = pd.to_numeric(series, errors="coerce")
    bad = index.notna() & ((index < 0) | (index >= len(classes)) | (index % 1 != 0))
    if bad.any():
        raise ValueError(f"column {series.name}: class index {index[bad].iloc[0]} outside the "
                         f"{len(classes)} classes {list(classes)}")
    names = np.asarray(classes, dtype=object)
    return pd.Series([names[int(i)] if pd.notna(i) else None for i in index], index=series.index, name=series.name,
                     dtype="string")


def _numbers(values: np.ndarray) -> list[float | None]:
    """Floats at :data:`DIGITS` significant digits, non-finite as None (strict JSON)."""
    finite = np.isfinite(values)
    rounded = np.where(finite, values, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.where(rounded != 0, np.floor(np.log10(np.abs(rounded))), 0.0)
    scale = 10.0 ** (DIGITS - 1 - magnitude)
    rounded = np.round(rounded * scale) / scale
    return [float(v) if ok else None for v, ok in zip(rounded.tolist(), finite.tolist())]


def top_channels(scores: pd.DataFrame, k: int = 3) -> dict[str, list[list[float]]]:
    """Per image its ``k`` most helpful and ``k`` most harmful channels: ``[[channel, ais_score, Δy], ...]``.

    ``scores`` is the fused table (``image_id``, ``channel``, ``ais_score``,
    ``delta_prediction``); helpful channels (score > 0) first, highest
    first, then harmful ones (score < 0), most negative first; ties broken
    by channel number.
    """
    cols = ["image_id", "channel", "ais_score", "delta_prediction"]
    df = scores[[c for c in cols if c in scores]].dropna(subset=["ais_score"])
    if "delta_prediction" not in df:
        df = df.assign(delta_prediction=np.nan)
    ranked = df.sort_values(["image_id", "ais_score", "channel"], ascending=[True, False, True], kind="mergesort")
    helpful = ranked[ranked["ais_score"] > 0].groupby("image_id", sort=False).head(k)
    harmful = (ranked[ranked["ais_score"] < 0].sort_values(["image_id", "ais_score", "channel"], kind="mergesort")
               .groupby("image_id", sort=False).head(k))
    both = pd.concat([helpful.assign(_o=0), harmful.assign(_o=1)]).sort_values(["image_id", "_o"], kind="mergesort")
    out: dict[str, list[list[float]]] = {}
    for image_id, ch, score, dy in zip(both["image_id"], both["channel"].astype(int), both["ais_score"],
                                       both["delta_prediction"]):
        out.setdefault(str(image_id), []).append([int(ch), *_numbers(np.array([score, dy]))])
    return out


def browser_data(table: pd.DataFrame, panel_dirs: Mapping[int, str], thumb_dirs: Mapping[int, str],
                 top: Mapping[str, list[list[float]]], views: Sequence[Mapping[str, str]],
                 classes: Sequence[str] | None = None, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The columnar object of ``browser-data.js`` (see the module docstring) for :func:`merge_tables`'s rows.

    ``panel_dirs`` / ``thumb_dirs`` give per shard the folder of its panels
    and thumbnails relative to the page (with a trailing ``/``).
    """
    ids = table["image_id"].astype(str).tolist()
    stems = table["file_stem"].astype(str).tolist() if "file_stem" in table else ids
    explained = (meta or {}).get("explained_class")
    columns = []
    for key in table.columns:
        if key in HIDDEN or (key != "image_id" and table[key].isna().all()):
            continue
        series = class_names(table[key], classes) if classes and key == "y_true" else table[key]
        columns.append({"key": key, "label": column_label(key, classes, explained), "group": column_group(key),
                        "visible": key in _VISIBLE or key.startswith("cc_") or _faith_visible(key),
                        **encode_column(series, classes)})
    return {
        "n": len(ids), "classes": list(classes) if classes else None, "columns": columns,
        "shard": table["shard"].astype(int).tolist() if "shard" in table else [0] * len(ids),
        "stem": [None if s == i else s for s, i in zip(stems, ids)],
        "panel_dirs": {str(k): v for k, v in panel_dirs.items()},
        "thumb_dirs": {str(k): v for k, v in thumb_dirs.items()},
        "top": [top.get(i, []) for i in ids], "views": [dict(v) for v in views], "meta": dict(meta or {}),
    }


def encode_data(data: Mapping[str, Any]) -> str:
    """``browser-data.js``: one compact JSON object assigned to ``window.AIS_BROWSER``."""
    body = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return f"window.AIS_BROWSER={body};\n"


def asset(name: str) -> str:
    """The text of one of the page's assets (package data in ``ais/reporting/assets``)."""
    return resources.files("ais.reporting").joinpath("assets", name).read_text(encoding="utf-8")


def browser_page(title: str, data_file: str = "browser-data.js", report: str | None = "index.html") -> str:
    """``browser.html``: the page with its style and code inlined, loading ``data_file`` (beside it)."""
    page = asset("browser.html")
    replacements = {
        "{{TITLE}}": _escape(title), "{{CSS}}": asset("browser.css"), "{{JS}}": asset("browser.js"),
        "{{DATA}}": _escape(data_file),
        "{{REPORT}}": f'<a href="{_escape(report)}">report</a>' if report else "",
    }
    for key, value in replacements.items():
        page = page.replace(key, value)
    return page


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


_TICKS = {"signed": ["-1", "0", "1"], "positive": ["0", "0.5", "1"], "negative": ["-1", "-0.5", "0"],
          "unit": ["0", "0.5", "1"], "dual": ["lowers", "0", "raises"]}


def view_legend(names: Sequence[str] | None = None, cmap: str = "jet") -> list[dict[str, Any]]:
    """The views of the panels (``names``, default every registered one) with their colour scale as CSS.

    ``gradient`` is a CSS ``linear-gradient`` sampled from the same lookup
    tables the panels are drawn with (:func:`ais.render.lut`); the dual
    view's hue runs along its direction axis (saturation is helpfulness).
    """
    from ais.render import lut
    from ais.views import get_view, list_views

    tables = {"signed": lut("bwr"), "positive": lut("bwr")[128:], "negative": lut("bwr")[:129],
              "unit": lut(cmap), "dual": lut("bwr")}
    out = []
    for name in names or list_views():
        view = get_view(name)
        colours = tables[view.scale]
        picks = colours[np.linspace(0, len(colours) - 1, 9).round().astype(int)]
        stops = ", ".join(f"rgb({r},{g},{b})" for r, g, b in picks.tolist())
        out.append({"name": name, "title": view.title, "scale": view.scale, "description": view.description,
                    "gradient": f"linear-gradient(to right, {stops})", "ticks": _TICKS[view.scale]})
    return out
