"""Pruning generalisation: do units ranked on one split keep their meaning on held-out images?

The seed "learned a pruning from the entire dataset and showed it generalizes".
Here the ranking is learned on ONE split (``train`` or ``val``) and judged on
another (``test``), so the test images never influence which units go:

1. **Rank** (:func:`rank_units`): every unit of the target layer is ablated
   for the ranking split's labelled images with the exact engine
   (:class:`ais.ablation.ChannelAblation`), the rows are fused as the
   workflow fuses them (:func:`ais.fusion.fuse`) and each unit gets its
   data-set-level score over that split only (:func:`ais.fusion.channel_table`):
   ``mean_ais_score`` (``score="ais"``, the default) or the mean Δerror
   (``score="delta_residual"``). Harmful units come first in ascending order
   of the score (most negative first), helpful units in descending order;
   ties keep unit order, units without a score go last.
2. **Prune** (:func:`pruning_table`): for every ``k`` of the grid
   (:func:`k_grid`), the model with the ``k`` most harmful units zeroed, the
   ``k`` most helpful, and ``k`` random units (``draws`` seeded draws) runs on
   the held-out images: a forward hook on the target layer multiplies its
   output by a ``(C,)`` 0/1 mask along dimension 1 (the dimension the engine
   zeroes), so each unit set costs at most one ordinary forward pass per image
   (:func:`masked_predictions`); where the network after the layer reads
   nothing from before it (:func:`layer_suffix`, checked against the model's
   own predictions), the layer's output is computed once and each unit set
   runs only the rest of the network (:class:`MaskedRunner`; both paths exact,
   ``benchmarks/pruning.py``). Unit sets that coincide (every order at
   ``k = C``) are evaluated once.
3. **Score**: the task's test metrics (:meth:`ais.tasks.Task.test_metrics`:
   SRCC, MAE, ... for regression, AUC for classification) with bootstrap
   intervals for the unpruned, harmful-first and helpful-first rows (one
   bootstrap seed: the resamples are paired across rows); the random draws'
   spread is the random baseline's interval (their ``lo`` / ``hi`` are null).

If the ranking generalises, removing the harmful units first should improve
(or hurt least) the held-out metrics and removing the helpful units first
should hurt most, both beyond the spread of the random draws.

The table (:data:`PRUNING_COLUMNS`) is long: one row per (order, k, draw,
metric); ``order`` ``none`` (k = 0) is the unpruned model.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ais.hooks import Hooks
from ais.logs import Progress

logger = logging.getLogger(__name__)

ORDERS = ("none", "harmful", "helpful", "random")
SCORES = {"ais": "mean_ais_score", "delta_residual": "mean_delta_residual"}
PRUNING_COLUMNS = ("order", "k", "fraction", "draw", "metric", "value", "lo", "hi", "n_images")


def unit_mask(n_units: int, units: Sequence[int] | np.ndarray) -> Tensor:
    """A ``(C,)`` float mask: 1 everywhere, 0 at ``units``."""
    idx = np.asarray(units, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n_units):
        raise ValueError(f"units must lie in [0, {n_units}); got {idx.min()}..{idx.max()}")
    mask = torch.ones(n_units)
    mask[torch.from_numpy(idx)] = 0.0
    return mask


def masked_predictions(
    model: nn.Module,
    layer: str,
    images: Tensor,
    mask: Tensor,
    predict: Any,
    batch_size: int = 32,
) -> np.ndarray:
    """Predictions of ``model`` on ``images`` ``(N, 3, H, W)`` with ``layer``'s output multiplied by ``mask`` ``(C,)``.

    The mask multiplies dimension 1 of the layer's output ``(N, C, ...)``
    (a forward hook that returns the masked output; removed in ``finally``).
    ``predict`` maps the model output to predictions (``task.predictions``).
    Returns float64 ``(N, ...)`` as ``predict`` gives them.
    """
    module = model.get_submodule(layer)
    device = next(model.parameters()).device
    m = mask.to(device)

    def apply(mod: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        if output.ndim < 2 or output.shape[1] != m.numel():
            raise RuntimeError(f"{layer}'s output {tuple(output.shape)} has no {m.numel()} units in dimension 1")
        return output * m.to(output.dtype).view(1, -1, *([1] * (output.ndim - 2)))

    out = []
    with Hooks() as hooks, torch.no_grad():
        hooks.add(module, apply)
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            out.append(predict(model(x)).double().cpu().numpy())
    return np.concatenate(out) if out else np.empty(0)


def layer_suffix(model: nn.Module, layer: str) -> nn.Module | None:
    """The model's output as a module of ``layer``'s output alone, or None where there is no such cut.

    The model is traced with :mod:`torch.fx` (``layer`` kept as one call); the
    cut exists when ``layer`` is called once and nothing after it reads a value
    computed before it (no skip connection around it). Parameters are shared
    with the model; callers check the cut against the model's own output
    (:class:`MaskedRunner`).
    """
    import torch.fx as fx

    class _Leaf(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            return name == layer or super().is_leaf_module(m, name)

    try:
        graph = _Leaf().trace(model)
    except Exception as exc:  # noqa: BLE001 (untraceable forward: the full-forward path)
        logger.info("pruning: %s cannot be traced (%s: %s); every unit set runs the whole model", type(model).__name__,
                    type(exc).__name__, exc)
        return None
    starts = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if len(starts) != 1:
        return None
    after, new = {starts[0]}, fx.Graph()
    env = {starts[0]: new.placeholder("activation")}
    for node in list(graph.nodes)[list(graph.nodes).index(starts[0]) + 1:]:
        if not any(i in after for i in node.all_input_nodes):
            continue
        for inp in node.all_input_nodes:
            if inp not in env and inp.op != "get_attr":
                return None  # reads a value from before the layer
            if inp not in env:
                env[inp] = new.node_copy(inp)
        after.add(node)
        if node.op == "output":
            new.output(fx.node.map_arg(node.args[0], env.__getitem__))
            return fx.GraphModule(model, new)
        env[node] = new.node_copy(node, env.__getitem__)
    return None


class MaskedRunner:
    """Predictions of the model with a ``(C,)`` unit mask on ``layer``, for many masks on the same images.

    Where :func:`layer_suffix` cuts the model (and the cut reproduces the
    model's predictions on ``images``), the layer's output ``A`` is computed
    once and each mask runs only the rest of the network on ``A * mask``;
    otherwise each mask is one full forward pass (:func:`masked_predictions`).
    Both are exact (``path`` says which runs); ``A`` is kept only below
    ``memory_budget`` bytes.
    """

    def __init__(self, model: nn.Module, layer: str, images: Tensor, predict: Any, batch_size: int = 32,
                 memory_budget: int = 1 << 30) -> None:
        self.model, self.layer, self.images, self.predict, self.batch_size = model, layer, images, predict, batch_size
        self.suffix, self.activations, self.path = None, [], "forward"
        suffix = layer_suffix(model, layer)
        if suffix is None:
            return
        kept: dict[str, Tensor] = {}
        device = next(model.parameters()).device
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                with Hooks() as hooks:
                    hooks.keep_output(model.get_submodule(layer), kept, "A")
                    y = predict(model(images[start:start + batch_size].to(device)))
                if not torch.allclose(predict(suffix(kept["A"].clone())), y, rtol=1e-4, atol=1e-5):
                    logger.info("pruning: the cut after %s does not reproduce the model; full forward passes", layer)
                    self.activations = []
                    return
                self.activations.append(kept["A"])
                if sum(a.numel() * a.element_size() for a in self.activations) > memory_budget:
                    self.activations = []
                    return
        self.suffix, self.path = suffix, "suffix"

    def __call__(self, mask: Tensor) -> np.ndarray:
        """Predictions ``(N, ...)`` float64 with ``layer``'s output multiplied by ``mask`` along dimension 1."""
        if self.suffix is None:
            return masked_predictions(self.model, self.layer, self.images, mask, self.predict, self.batch_size)
        out = []
        with torch.no_grad():
            for a in self.activations:
                m = mask.to(a.device, a.dtype).view(1, -1, *([1] * (a.ndim - 2)))
                out.append(self.predict(self.suffix(a * m)).double().cpu().numpy())
        return np.concatenate(out) if out else np.empty(0)


def k_grid(n_units: int, k: str | Sequence[int] = "auto") -> list[int]:
    """The numbers of units removed: ``auto`` = 1, 4, 16, ... (x4) below ``C``, then ``C``; or the given list.

    A given list is sorted and deduplicated; values outside ``1..C`` are refused.
    """
    if n_units < 1:
        raise ValueError(f"the layer has {n_units} units; nothing to prune")
    if isinstance(k, str):
        if k != "auto":
            raise ValueError(f"validity.pruning.k must be 'auto' or a list of unit counts, got {k!r}")
        grid, value = [], 1
        while value < n_units:
            grid.append(value)
            value *= 4
        return grid + [n_units]
    values = sorted({int(v) for v in k})
    bad = [v for v in values if not 1 <= v <= n_units]
    if bad or not values:
        raise ValueError(f"validity.pruning.k: {bad or 'empty list'}: each must lie in 1..{n_units} "
                         "(the target layer's units)")
    return values


def rank_units(channels: pd.DataFrame, n_units: int, score: str = "ais") -> dict[str, np.ndarray]:
    """``{"harmful": units, "helpful": units}`` (each all ``C`` units, most harmful / most helpful first).

    ``channels`` has the columns of :data:`ais.fusion.CHANNELS_SCHEMA` (the
    ranking split's data-set-level scores); ``score`` picks the column
    (:data:`SCORES`). Ties keep unit order; units without a score go last.
    """
    if score not in SCORES:
        raise ValueError(f"validity.pruning.score must be one of {sorted(SCORES)}, got {score!r}")
    values = np.full(n_units, np.nan)
    ch = channels["channel"].to_numpy(np.int64)
    values[ch] = channels[SCORES[score]].to_numpy(np.float64, na_value=np.nan)
    missing = np.isnan(values)
    units = np.arange(n_units)
    harmful = np.lexsort((units, np.where(missing, np.inf, values)))
    helpful = np.lexsort((units, np.where(missing, np.inf, -values)))
    return {"harmful": harmful, "helpful": helpful}


def unit_sets(
    ranking: Mapping[str, np.ndarray], n_units: int, ks: Sequence[int], draws: int, seed: int
) -> Iterator[tuple[str, int, int, np.ndarray]]:
    """``(order, k, draw, units)`` for the unpruned model (``none``, k 0) and every order and ``k``.

    Random draw ``d`` at ``k`` is ``default_rng([seed, 17, k, d]).choice(C, k, replace=False)``.
    """
    yield "none", 0, 0, np.empty(0, dtype=np.int64)
    for k in ks:
        for order in ("harmful", "helpful"):
            yield order, k, 0, np.sort(ranking[order][:k])
        for d in range(draws):
            rng = np.random.default_rng([seed, 17, k, d])
            yield "random", k, d, np.sort(rng.choice(n_units, size=k, replace=False))


def metric_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flatten a task's test-metrics dict (``{name: {"value", "ci95": [lo, hi]}, "n": n}``) into rows."""
    n = metrics.get("n")
    rows = []
    for name, entry in metrics.items():
        if isinstance(entry, Mapping) and "value" in entry:
            lo, hi = (list(entry.get("ci95") or [None, None]) + [None, None])[:2]
            rows.append({"metric": name, "value": entry["value"], "lo": lo, "hi": hi, "n_images": n})
    return rows


def pruning_table(
    model: nn.Module,
    layer: str,
    images: Tensor,
    y_true: np.ndarray,
    task: Any,
    ranking: Mapping[str, np.ndarray],
    ks: Sequence[int],
    draws: int = 3,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
) -> pd.DataFrame:
    """The held-out metrics of every unit set of :func:`unit_sets` (columns :data:`PRUNING_COLUMNS`).

    ``images`` ``(N, 3, H, W)`` and ``y_true`` ``(N,)`` are the held-out
    labelled images; ``task`` gives ``predictions`` and ``test_metrics``.
    Each distinct unit set runs once. Random draws get no bootstrap (``lo`` /
    ``hi`` null: the spread of the draws is their interval, see
    :func:`summarize_pruning`); the other rows get ``n_boot`` resamples.
    """
    n_units = len(ranking["harmful"])
    sets = list(unit_sets(ranking, n_units, ks, draws, seed))
    runner = MaskedRunner(model, layer, images, task.predictions, batch_size)
    logger.info("pruning: %d unit sets on %d held-out images (%s path)", len(sets), len(images), runner.path)
    cache: dict[tuple[bytes, int], list[dict[str, Any]]] = {}
    predictions: dict[bytes, np.ndarray] = {}
    progress = Progress(len(sets), "pruned models", logger, every=30.0)
    rows = []
    for done, (order, k, draw, units) in enumerate(sets, start=1):
        boot = 0 if order == "random" else n_boot  # the draws' spread is the random baseline's interval
        key = (units.tobytes(), boot)
        if key not in cache:
            y_pred = predictions.get(key[0])
            if y_pred is None:
                y_pred = predictions[key[0]] = runner(unit_mask(n_units, units))
            cache[key] = metric_rows(task.test_metrics(y_true, y_pred, boot, seed))
        rows += [{"order": order, "k": k, "fraction": k / n_units, "draw": draw, **r} for r in cache[key]]
        progress.update(done)
    table = pd.DataFrame(rows, columns=list(PRUNING_COLUMNS))
    for col in ("value", "lo", "hi"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype(np.float64)
    table["n_images"] = table["n_images"].fillna(len(y_true)).astype(np.int64)
    return table


def ranking_scores(
    model: nn.Module,
    layer: str,
    batches: Iterable[tuple[Tensor, Sequence[str], Sequence[float]]],
    n_images: int,
    task: Any,
    scope: str = "global",
    magnitude: str = "zscore",
    device: Any = None,
) -> tuple[pd.DataFrame, int]:
    """Data-set-level unit scores of the ranking split: ``(channels table, C)``.

    Every unit is ablated for the batches ``(x, image_ids, y_true)`` with the
    exact engine, the rows fused with ``scope`` / ``magnitude`` (as the
    workflow's fusion) and averaged per unit (:func:`ais.fusion.channel_table`,
    no bootstrap).
    """
    from ais.ablation import ChannelAblation, ablate_batches
    from ais.fusion import channel_table, fuse

    with ChannelAblation(model, layer, task.target(), device=device) as engine:
        table = ablate_batches(engine, batches, n_images, task.error,
                               getattr(task, "residual_target", None)).to_pandas()
        n_units = engine.n_channels
    if table["y_true"].isna().all():
        raise ValueError("the ranking split has no labelled image; pruning needs labelled images to rank units")
    fused = fuse(table, scope=scope, magnitude=magnitude)
    channels, _ = channel_table(fused, n_boot=0, n_splits=0)
    return channels, n_units


def summarize_pruning(table: pd.DataFrame) -> dict[str, Any]:
    """Per metric: the unpruned value and each order's curve, as plain JSON-able values.

    ``{metric: {"baseline": v, "harmful"|"helpful": [{k, fraction, value, lo, hi}],
    "random": [{k, fraction, value (mean over draws), lo, hi (min, max over draws), draws}]}}``.
    """
    out: dict[str, Any] = {}
    for metric, rows in table.groupby("metric", sort=True):
        base = rows.loc[rows["order"] == "none", "value"]
        entry: dict[str, Any] = {"baseline": float(base.iloc[0]) if len(base) else None}
        for order in ("harmful", "helpful"):
            part = rows[rows["order"] == order].sort_values("k")
            entry[order] = [{"k": int(r.k), "fraction": float(r.fraction), "value": _num(r.value),
                             "lo": _num(r.lo), "hi": _num(r.hi)} for r in part.itertuples()]
        rnd = rows[rows["order"] == "random"].groupby("k", sort=True)
        entry["random"] = [{"k": int(k), "fraction": float(g["fraction"].iloc[0]), "value": _num(g["value"].mean()),
                            "lo": _num(g["value"].min()), "hi": _num(g["value"].max()), "draws": int(len(g))}
                           for k, g in rnd]
        out[str(metric)] = entry
    return out


def _num(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
