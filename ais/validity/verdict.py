"""The validity summary: means with bootstrap intervals per map, and a verdict per map from the numbers.

Verdict rules (each a clause; :func:`verdict` joins them):

- **deletion / insertion**: the paired gain over the random map on the same
  images (:func:`ais.validity.faithfulness.faithfulness_rows`): "beats the
  random map" when its 95 % interval lies above 0, "worse than the random
  map" when below, else "no better than the random map";
- **randomisation**: the mean Spearman correlation between the trained and
  the randomised model's map: at the deepest depth (the whole model
  randomised) a correlation with ``|ρ| >=`` :data:`SIMILAR` (an inverted map is as
  much the same map) reads "stays similar when the
  whole model is randomised: fails the sanity check"; otherwise "changes when
  the model is randomised" ("as soon as the output block is randomised" when
  ``|ρ|`` is already below it at the top depth);
- **localisation** and **external agreement** are quoted as numbers.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

#: Spearman correlation at or above which a randomised model's map counts as "still similar".
SIMILAR = 0.5


def mean_ci(values: Any, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """``{"mean", "lo", "hi", "n"}``: the mean of the finite ``values`` and its percentile-bootstrap interval.

    Undefined entries are ``None`` (valid JSON). The resamples depend on ``(seed, n)`` only.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    lo = hi = None
    if v.size > 1 and n_boot > 0:
        rng = np.random.default_rng(seed)
        means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1)
        a = (1 - level) / 2
        lo, hi = (float(q) for q in np.percentile(means, [100 * a, 100 * (1 - a)]))
    return {"mean": float(v.mean()), "lo": lo, "hi": hi, "n": int(v.size)}


def faithfulness_summary(table: pd.DataFrame, n_boot: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per map and sign: mean deletion / insertion AUC and gain over the random map, with intervals."""
    out: dict[str, dict[str, Any]] = {}
    for (name, sign), rows in table.groupby(["map", "sign"], sort=False):
        entry = out.setdefault(name, {"method": rows["method"].iloc[0], "signs": {}})
        entry["signs"][sign] = {col: mean_ci(rows[col], n_boot, seed)
                                for col in ("deletion_auc", "insertion_auc", "deletion_gain", "insertion_gain")}
    for entry in out.values():
        sign = "pos" if "pos" in entry["signs"] else next(iter(entry["signs"]))
        entry.update({"sign": sign, **entry["signs"][sign]})
    return out


def sanity_summary(table: pd.DataFrame, n_boot: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per map: the similarity at the top depth (output block randomised) and at the deepest (all randomised)."""
    out: dict[str, dict[str, Any]] = {}
    if not len(table):
        return out
    for name, rows in table.groupby("map", sort=False):
        def at(depth: int) -> dict[str, Any]:
            sel = rows[rows["depth"] == depth]
            return {"depth": int(depth), "block": str(sel["block"].iloc[0]),
                    **{col: mean_ci(sel[col], n_boot, seed) for col in ("spearman", "spearman_abs", "ssim")}}
        depths = sorted(rows["depth"].unique())
        curve = rows.groupby("depth")[["spearman", "ssim"]].mean()
        out[name] = {"top": at(depths[0]), "deepest": at(depths[-1]),
                     "by_depth": [{"depth": int(d), "block": str(rows.loc[rows["depth"] == d, "block"].iloc[0]),
                                   "spearman": _num(curve.loc[d, "spearman"]), "ssim": _num(curve.loc[d, "ssim"])}
                                  for d in depths]}
    return out


def _num(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _versus_random(gain: Mapping[str, Any], what: str) -> str:
    lo, hi, mean = gain.get("lo"), gain.get("hi"), gain.get("mean")
    if mean is None:
        return f"{what}: not measured"
    if lo is not None and lo > 0:
        return f"beats the random map on {what}"
    if hi is not None and hi < 0:
        return f"worse than the random map on {what}"
    return f"no better than the random map on {what}"


def _randomisation(entry: Mapping[str, Any]) -> str | None:
    top, deep = entry.get("top"), entry.get("deepest")
    if not top or not deep:
        return None
    rho_top, rho_deep = top["spearman"]["mean"], deep["spearman"]["mean"]
    if rho_deep is None:
        return "randomisation: undefined (constant maps)"
    if abs(rho_deep) >= SIMILAR:
        return f"stays similar when the whole model is randomised (ρ = {rho_deep:.2f}): fails the sanity check"
    if rho_top is not None and abs(rho_top) < SIMILAR:
        return f"changes as soon as the output block is randomised (ρ = {rho_top:.2f})"
    return f"changes when the model is randomised (ρ = {rho_deep:.2f} with all blocks randomised)"


def verdict(entry: Mapping[str, Any]) -> str:
    """One sentence from a map's summary entry (faithfulness gains, randomisation, localisation, external)."""
    clauses = [_versus_random(entry.get("deletion_gain") or {}, "deletion"),
               _versus_random(entry.get("insertion_gain") or {}, "insertion")]
    rnd = _randomisation(entry.get("randomisation") or {})
    if rnd:
        clauses.append(rnd)
    for mask, loc in (entry.get("localisation") or {}).items():
        if isinstance(loc, Mapping) and loc.get("pointing_game") is not None:
            clauses.append(f"its {loc.get('part', 'peak')} pixel lies in the {mask} region in "
                           f"{100 * loc['pointing_game']:.0f} % of the images")
    ext = entry.get("external") or {}
    if ext.get("cc") is not None:
        clauses.append(f"correlates with the external maps at CC = {ext['cc']:.2f}")
    return "; ".join(clauses)
