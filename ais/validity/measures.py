"""The run-level validity measures of summary.json, from the library functions of the measure modules.

:func:`collect` turns the evaluated images' maps and the run's tables into
plain JSON-able figures: localisation (pointing game and relevance mass of
every map on the demo's masks, :mod:`ais.validity.localisation`), what the
helpfulness sign reduces to (:mod:`ais.validity.sign`), exact ablation
against its first-order Taylor estimate (:mod:`ais.validity.taylor`),
pruning (:mod:`ais.validity.pruning`), agreement with external maps, and the
degenerate warnings (:mod:`ais.validity.degenerate`). Tables come in as
DataFrames (the stage reads the files); a table that is not given leaves
its entry out.

Localisation, for every map: its most positive part against the
``raise`` mask and, for signed maps, its most negative part (the negated
map) against the ``lower`` mask, each where the map has values of that sign
(:func:`ais.validity.faithfulness.map_signs`: AIS's ``harmful`` map only
its negative part).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ais.validity.faithfulness import map_signs
from ais.validity.verdict import mean_ci

logger = logging.getLogger(__name__)


@dataclass
class Inputs:
    """What the measures read: the evaluated images (maps ``(N, H, W)``, rows, inputs) and the run's tables."""

    model: nn.Module
    layer: str
    task: Any
    x: torch.Tensor  # (N, 3, H, W)
    rows: pd.DataFrame  # the evaluated images' figures rows (image_id, y_true, y_pred, ...)
    maps: Mapping[str, np.ndarray]  # map name -> (N, H, W)
    masks: Sequence[Mapping[str, np.ndarray] | None]  # per image: {"raise", "lower"} (H, W) bool, or None
    signed: Mapping[str, bool]  # map name -> its method is signed
    scores: pd.DataFrame | None = None  # fusion/scores.parquet (the ablation rows, fused)
    predictions: pd.DataFrame | None = None  # model/predictions.parquet
    pruning: pd.DataFrame | None = None  # validity/pruning.parquet
    external: pd.DataFrame | None = None  # validity/external.parquet
    extra_warnings: list[str] = field(default_factory=list)


def collect(inp: Inputs, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """``{"localisation", "external", "sign_reduction", "taylor", "pruning", "position", "warnings"}``.

    A measure whose module is not installed is left out (its entry says so, and the log).
    """
    out: dict[str, Any] = {"localisation": _guarded(localisation, {}, inp), "external": external(inp.external),
                           "sign_reduction": _guarded(sign_reduction, {}, inp, n_boot, seed),
                           "taylor": _guarded(taylor, {}, inp, n_boot, seed)}
    if inp.pruning is not None and len(inp.pruning):
        out["pruning"] = _guarded(_pruning, {}, inp.pruning)
    out["position"], flagged = _guarded(degenerate, ({}, []), inp)  # degenerate_flags logs its own warnings
    own = list(inp.extra_warnings)
    missing = sum(len(v.get("missing", [])) for v in out["external"].values())
    if missing:
        own.append(f"{missing} external saliency map(s) are missing or unreadable (listed in summary.json "
                   "under methods.<map>.external.missing); their images are left out of the agreement")
    for warning in own:
        logger.warning("%s", warning)
    out["warnings"] = [*own, *flagged]
    return out


def _guarded(fn: Any, empty: Any, *args: Any) -> Any:
    """``fn(*args)``, or ``empty`` with a log line when one of the measure modules is not installed."""
    try:
        return fn(*args)
    except ModuleNotFoundError as exc:
        if not str(exc.name or "").startswith("ais.validity."):
            raise
        logger.warning("validity: %s is not available (%s); its figures are left out", fn.__name__, exc.name)
        return empty


def _pruning(table: pd.DataFrame) -> dict[str, Any]:
    from ais.validity.pruning import summarize_pruning

    return summarize_pruning(table)


def localisation(inp: Inputs) -> dict[str, dict[str, Any]]:
    """Per map: ``{"raise": {pointing_game, relevance_mass, n_images, n_skipped}, "lower": ...}`` on the masks."""
    from ais.validity.localisation import localisation_summary

    have = [i for i, m in enumerate(inp.masks) if m is not None]
    if not have:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for name, maps in inp.maps.items():
        signs = map_signs(maps, inp.signed.get(name, True))  # the parts the map has (harmful: only negative)
        parts = {mask: s for mask, s, sign in (("raise", 1.0, "pos"), ("lower", -1.0, "neg")) if sign in signs}
        out[name] = {mask: {"part": "most positive" if s > 0 else "most negative",
                            **localisation_summary([s * maps[i] for i in have], [inp.masks[i][mask] for i in have])}
                     for mask, s in parts.items()}
    return out


def external(table: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    """Per map: the mean CC, SIM, KLD, NSS, AUC-Judd, sAUC over the images with an external map, and the missing."""
    if table is None or not len(table):
        return {}
    out: dict[str, dict[str, Any]] = {}
    metrics = [c for c in ("cc", "sim", "kld", "nss", "auc_judd", "sauc") if c in table.columns]
    for name, rows in table.groupby("map", sort=False):
        ok = rows[rows["status"] == "ok"]
        parts = {str(p): {m: _mean(g[m]) for m in metrics} for p, g in ok.groupby("part", sort=False)}
        first = next(iter(parts.values()), {m: None for m in metrics})
        bad = rows.loc[rows["status"] != "ok", ["image_id", "status"]].drop_duplicates("image_id")
        out[str(name)] = {**first, "part": next(iter(parts), None), "parts": parts,
                          "n_images": int(ok["image_id"].nunique()),
                          "missing": [f"{r.image_id}: {r.status}" for r in bad.itertuples()]}
    return out


def _mean(values: pd.Series) -> float | None:
    v = values.to_numpy(np.float64, na_value=np.nan)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def sign_reduction(inp: Inputs, n_boot: int, seed: int) -> dict[str, Any]:
    """How often Δerror = sign(error) x Δy holds (all ablated pairs) and how close AIS is to that product map."""
    from ais.validity.sign import error_sign, map_product_correlation, sign_summary
    from ais.validity.sign import sign_reduction as per_image

    out: dict[str, Any] = {}
    if inp.scores is not None and len(inp.scores):
        out.update(sign_summary(per_image(inp.scores)))
    if "ais" in inp.maps and "direction" in inp.maps:
        signs = error_sign(inp.rows["y_pred"].to_numpy(np.float64), inp.rows["y_true"].to_numpy(np.float64))
        r = [map_product_correlation(a, d, float(s)) if np.isfinite(s) else np.nan
             for a, d, s in zip(inp.maps["ais"], inp.maps["direction"], signs)]
        out["map_correlation"] = mean_ci(r, n_boot, seed)
        mc = out["map_correlation"]["mean"]
        if mc is not None:
            out["map_sentence"] = (f"Pixel correlation between the AIS map and the direction map times the sign of "
                                   f"the image's error: {mc:.2f} on average over {out['map_correlation']['n']} "
                                   "image(s) (1: the AIS map is that product).")
    return out


def taylor(inp: Inputs, n_boot: int, seed: int) -> dict[str, Any]:
    """Per-image Spearman correlation of the exact Δy of every unit with its first-order Taylor estimate."""
    if inp.scores is None or not len(inp.scores):
        return {}
    from ais.validity.taylor import taylor_estimates, taylor_table

    ids = inp.rows["image_id"].tolist()
    estimates = taylor_estimates(inp.model, inp.layer, inp.x, inp.task.target())
    per_image = taylor_table(inp.scores[inp.scores["image_id"].isin(ids)], ids, estimates)
    out = {"spearman": mean_ci(per_image["taylor_spearman"], n_boot, seed),
           "pearson": mean_ci(per_image["taylor_pearson"], n_boot, seed)}
    rho = out["spearman"]["mean"]
    if rho is not None:
        out["sentence"] = (f"Exact ablation against gradient x activation: Spearman ρ = {rho:.2f} on average over "
                           f"{out['spearman']['n']} image(s) (1: the first-order estimate ranks the units as "
                           "exact ablation does; lower: ablation adds what gradients miss).")
    return out


def degenerate(inp: Inputs) -> tuple[dict[str, Any], list[str]]:
    """Position effects per map and the degenerate warnings (collapsed predictions, empty maps, flips, position)."""
    from ais.validity.degenerate import degenerate_flags, position_effects

    y_pred = y_true = None
    if inp.predictions is not None and len(inp.predictions):
        labelled = inp.predictions[inp.predictions["y_true"].notna()]
        y_pred, y_true = labelled["y_pred"].to_numpy(np.float64), labelled["y_true"].to_numpy(np.float64)
    flipped = None
    if inp.scores is not None and "flipped" in inp.scores.columns and "sign" in inp.scores.columns:
        scored = inp.scores[inp.scores["sign"] != 0]
        flipped = float(scored["flipped"].mean()) if len(scored) else None
    position = {name: {k: v for k, v in position_effects(maps).items() if k != "mean_map"}  # the map: too large
                for name, maps in inp.maps.items()}
    parts = {k: False for k in _sign_parts() if k in inp.maps}  # helpful / harmful: one sign by definition
    flags = degenerate_flags(y_pred=y_pred, y_true=y_true, maps=dict(inp.maps), fraction_flipped=flipped,
                             signed=parts)
    return position, list(flags)


def _sign_parts() -> list[str]:
    """The maps that are one sign's part of a signed method's map (AIS's ``helpful`` and ``harmful``)."""
    from ais.methods import get_method, list_methods

    return [k for m in list_methods() if get_method(m).signed for k in get_method(m).map_names()[1:]]
