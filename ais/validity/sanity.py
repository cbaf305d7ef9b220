"""Cascading model-parameter randomisation (Adebayo et al. 2018): does a map change with the model?

The blocks of the model are re-initialised one after another from the
output down (:func:`randomisation_blocks`), cumulatively: depth 1 has the
output block randomised, depth ``d`` the ``d`` blocks nearest the output.
At every depth each method's maps are computed again on the randomised
model exactly as for the trained one (:func:`ais.methods.compute_maps`);
the methods that need the fused AIS scores get them from an exact ablation
of the same model (``ais.ablation.ChannelAblation``, fused with
:func:`ais.fusion.fuse` over the evaluated images): the trained model's
maps (depth 0) come from the same procedure, so both sides are computed
alike. A map that stays similar to the trained model's while the model is
destroyed does not explain the model.

Similarities per image, map and depth: the Spearman rank correlation of the
pixel values (signed, and of their absolute values, as Adebayo et al.
report both) and the structural similarity :func:`ssim` (Wang et al. 2004;
the defaults of ``skimage.metrics.structural_similarity``: a 7 x 7 uniform
window, sample covariances, K1 = 0.01, K2 = 0.03, the border of half a
window left out), with data range 2 for signed methods (maps in [-1, 1])
and 1 for unsigned ones.

Re-initialisation uses each module's own ``reset_parameters`` (PyTorch's
default initialisation; BatchNorm: unit scale, zero shift, fresh running
statistics), seeded per depth; a module without one has its parameters
redrawn from a normal distribution with the trained values' mean and
standard deviation. The trained model is never modified: a copy is.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import Tensor, nn

from ais.logs import Progress

logger = logging.getLogger(__name__)

Block = tuple[str, tuple[str, ...]]  # (label, module names)


def _parametrised(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _group(children: Sequence[tuple[str, nn.Module]]) -> list[list[str]]:
    """Children with parameters in forward order; a norm layer joins the block before it."""
    groups: list[list[str]] = []
    for name, child in children:
        if not _parametrised(child):
            continue
        norm = isinstance(child, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))
        if norm and groups:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def randomisation_blocks(model: nn.Module, family: Any = None) -> list[Block]:
    """The blocks to randomise, output first: ``[(label, module names), ...]``.

    A family may say (``family.randomisation_blocks(model)``, same shape).
    Otherwise: the top-level modules with parameters outside the backbone
    (the head), then the top-level children of the backbone
    (``family.backbone_prefix`` when it names a module, such as
    ``features.``; else the model's own children), each norm layer with the
    block before it, in reverse order.
    """
    custom = getattr(family, "randomisation_blocks", None)
    if callable(custom):
        return [(str(label), tuple(names)) for label, names in custom(model)]
    prefix = str(getattr(family, "backbone_prefix", "") or "")
    backbone = prefix[:-1] if prefix.endswith(".") else ""
    names = dict(model.named_modules())
    if backbone and backbone in names:
        inner = [(f"{backbone}.{n}", m) for n, m in names[backbone].named_children()]
        children = []
        for n, m in model.named_children():
            children.extend(inner if n == backbone else [(n, m)])
    else:
        children = list(model.named_children())
    groups = _group(children)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no modules with parameters to randomise")
    return [(g[0] if len(g) == 1 else f"{g[0]}+", tuple(g)) for g in reversed(groups)]


def randomise_(model: nn.Module, names: Sequence[str], seed: int) -> None:
    """Re-initialise the parameters (and buffers) of modules ``names`` of ``model`` in place, seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for name in names:
            for module in model.get_submodule(name).modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                    if hasattr(module, "reset_running_stats"):
                        module.reset_running_stats()
                    continue
                for p in module.parameters(recurse=False):
                    with torch.no_grad():
                        p.normal_(float(p.mean()), float(p.std()) if p.numel() > 1 else 0.02)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each row of ``a`` and ``b`` (N, P), average ranks for ties; NaN if constant."""
    ra = rankdata(np.asarray(a, dtype=np.float64), axis=1)
    rb = rankdata(np.asarray(b, dtype=np.float64), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ra * rb).sum(axis=1) / den
    return np.where(den > 0, np.clip(r, -1.0, 1.0), np.nan)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float, win_size: int = 7) -> np.ndarray:
    """Mean structural similarity of each pair of maps ``a``, ``b`` (N, H, W) or (H, W): ``(N,)`` or a float.

    As ``skimage.metrics.structural_similarity(a, b, data_range=...)`` with
    its defaults: uniform ``win_size`` window, sample covariance, K1 = 0.01,
    K2 = 0.03, the mean over the pixels whose window lies inside the map.
    """
    single = np.ndim(a) == 2
    x = torch.as_tensor(np.asarray(a, dtype=np.float64)).reshape(-1, 1, *np.shape(a)[-2:])
    y = torch.as_tensor(np.asarray(b, dtype=np.float64)).reshape(-1, 1, *np.shape(b)[-2:])
    if x.shape != y.shape or min(x.shape[-2:]) < win_size:
        raise ValueError(f"ssim: maps must have the same shape, each side >= {win_size}; got "
                         f"{tuple(np.shape(a))} and {tuple(np.shape(b))}")
    mean = lambda t: F.avg_pool2d(t, win_size, stride=1)  # noqa: E731  (windows inside the map)
    ux, uy = mean(x), mean(y)
    cov = win_size ** 2 / (win_size ** 2 - 1)
    vx, vy = cov * (mean(x * x) - ux * ux), cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    out = s.mean(dim=(1, 2, 3)).numpy()
    return float(out[0]) if single else out


def similarity_rows(trained: Mapping[str, np.ndarray], randomised: Mapping[str, np.ndarray],
                    data_range: Mapping[str, float]) -> dict[str, dict[str, np.ndarray]]:
    """Per map: ``spearman``, ``spearman_abs`` and ``ssim`` ``(N,)`` between trained and randomised maps (N, H, W)."""
    out = {}
    for name, a in trained.items():
        b = randomised[name]
        fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)
        out[name] = {"spearman": spearman_rows(fa, fb), "spearman_abs": spearman_rows(np.abs(fa), np.abs(fb)),
                     "ssim": ssim(a, b, data_range[name])}
    return out


def ablation_inputs(model: nn.Module, layer: str, x: Tensor, y_true: np.ndarray, task: Any,
                    fusion: Mapping[str, Any], family: Any = None) -> dict[str, np.ndarray]:
    """The channel weights :func:`ais.methods.compute_maps` needs, from an exact ablation of ``model``.

    ``x`` (N, 3, H, W), ``y_true`` (N,) (NaN: unlabelled). Returns
    ``ais_weights`` and ``direction_weights`` (N, C) float32: the fused AIS
    scores over these images (``fusion``: the config's scope and magnitude;
    an unlabelled image gets the images' mean score per channel) and -Δy.
    """
    from ais.ablation import ChannelAblation, ablation_table
    from ais.fusion import fuse

    ids = [str(i) for i in range(len(x))]
    with ChannelAblation(model, layer, task.target(), family=family) as engine:
        y_pred, y_abl = engine(x)
    table = ablation_table(ids, list(y_true), y_pred, y_abl, error=task.error).to_pandas()
    fused = fuse(table, fusion.get("scope", "global"), fusion.get("magnitude", "zscore"))
    n, c = y_abl.shape
    ais = fused["ais_score"].to_numpy(np.float64).reshape(n, c)
    direction = fused["direction"].to_numpy(np.float64).reshape(n, c)
    if np.isnan(ais).any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a channel NaN for every image: filled with 0
            fill = np.nan_to_num(np.nanmean(ais, axis=0))
        ais = np.where(np.isnan(ais), fill[None, :], ais)
    return {"ais_weights": ais.astype(np.float32), "direction_weights": direction.astype(np.float32)}


def maps_of(model: nn.Module, layer: str, x: Tensor, y_true: np.ndarray, methods: Sequence[str], task: Any,
            family: Any, fusion: Mapping[str, Any], options: Mapping[str, Any], batch_size: int) -> dict[str, np.ndarray]:
    """Every map of ``methods`` for ``x`` (N, 3, H, W) on ``model``, computed as compute_heatmaps does: (N, H, W) each."""
    from ais.methods import compute_maps, get_method

    inputs: dict[str, Any] = {"options": options}
    if any("ablation" in get_method(m).needs for m in methods):
        inputs.update(ablation_inputs(model, layer, x, y_true, task, fusion, family))
    parts: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(x), batch_size):
        sl = slice(s, s + batch_size)
        batch_inputs = {k: (v[sl] if k != "options" else v) for k, v in inputs.items()}
        maps = compute_maps(model, layer, x[sl], batch_inputs, methods=methods, target=task.target(), family=family)
        for k, v in maps.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def cascading_randomisation(model: nn.Module, layer: str, x: Tensor, y_true: np.ndarray, image_ids: Sequence[str],
                            methods: Sequence[str], task: Any, family: Any = None,
                            fusion: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
                            seed: int = 0, batch_size: int = 8) -> pd.DataFrame:
    """Similarity of every map of the trained ``model`` to the same map of cascadingly randomised copies.

    One row per (image, map, depth >= 1): ``block`` (the deepest block
    randomised at that depth), ``blocks`` (how many), ``spearman``,
    ``spearman_abs``, ``ssim`` (sanity.parquet). ``model`` is left as it was.
    """
    from ais.methods import get_method

    fusion, options = dict(fusion or {}), dict(options or {})
    args = (layer, x, y_true, methods, task, family, fusion, options, batch_size)
    work = copy.deepcopy(model).eval()  # randomised in place, depth after depth
    trained = maps_of(work, *args)
    signed = {k: get_method(m).signed for m in methods for k in get_method(m).map_names()}
    data_range = {k: 2.0 if signed.get(k, True) else 1.0 for k in trained}
    blocks = randomisation_blocks(work, family)
    progress = Progress(len(blocks), "sanity: randomised depths", logger, every=30.0)
    frames = []
    for depth, (label, names) in enumerate(blocks, start=1):
        randomise_(work, names, seed * 1000 + depth)
        sims = similarity_rows(trained, maps_of(work.eval(), *args), data_range)
        for name, values in sims.items():
            frames.append(pd.DataFrame({"image_id": list(image_ids), "map": name,
                                        "method": _method_of(name, methods), "depth": depth, "block": label,
                                        "blocks": len(blocks), **values}))
        progress.update(depth)
    return pd.concat(frames, ignore_index=True)


def _method_of(map_name: str, methods: Sequence[str]) -> str:
    from ais.methods import get_method

    return next(m for m in methods if map_name in get_method(m).map_names())
