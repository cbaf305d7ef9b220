"""RISE deletion and insertion curves (Petsiuk et al. 2018) of every map, batched.

**The curves.** A map orders the pixels of its image. *Deletion* replaces
the pixels, most important first, by a substrate (default: the image's mean
colour) in ``S`` equal steps and records the explained output (the task's
target) after each; *insertion* starts from a substrate (default: the
image blurred) and puts the image's pixels back in the same order. A step
``j`` has removed (inserted) the fraction ``j / S`` of the pixels; step 0 and
step ``S`` are the clean image and the substrate (or the reverse).

**Signs.** The ``pos`` order puts the most positive map values first, the
``neg`` order the most negative. Removing the pixels a map says *raise* the
output (``pos``) should make the output fall; removing the pixels it says
*lower* the output (``neg``) should make it rise. Inserting reverses both.
A map is evaluated in each sign its values take (:func:`map_signs`):
unsigned methods only ``pos``.

**Ties** are never broken by an arbitrary order: a group of ``g`` pixels of
equal value that the ``k``-th pixel boundary cuts is blended by the same
fraction ``(k - before) / g`` (:func:`removal_weights`). So the *all-equal
map* (``uniform``) blends every pixel by ``j / S`` at step ``j``, a zero map is
scored as that, and the curves never depend on pixel order within a tie.

**Normalisation.** The curve of an image is the change of the explained
output from the curve's start (the clean image for deletion, the substrate
for insertion), divided by one scale for the whole run: the standard
deviation of the clean outputs over the evaluated images (``scale``; 1 when
they do not vary, which the run's warnings report). Curves of different
methods and images are in the same unit ("prediction standard deviations"),
and the area under a curve (trapezoid over the fraction 0..1) is its mean
change. A faithful ``pos`` map has a deletion AUC below the random map's
and an insertion AUC above it; ``gain`` columns give that difference with
the sign turned so that > 0 always means "better than the random map on
the same image".

**Baselines** in the same run and on the same images: ``random`` (a seeded
uniform-noise map per image on the target layer's grid, upsampled like the
layer maps, so that it removes pixels in blobs as smooth as theirs rather
than scattered single pixels, which push a model off its inputs; order
``pos``) and ``uniform`` (all pixels equal, see ties).

All perturbed images of all maps, signs, steps and both curves go through
the model in batches of ``batch_size`` (one forward per batch); each
perturbed image is built inside its batch, so memory is one batch.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ais.logs import Progress

logger = logging.getLogger(__name__)

SIGNS = ("pos", "neg")
SUBSTRATES = ("mean", "blur", "zero")
RANDOM, UNIFORM = "random", "uniform"
BASELINES = (RANDOM, UNIFORM)
#: direction the output should move, per curve and sign: deletion of ``pos`` pixels lowers it.
EXPECTED = {("deletion", "pos"): -1, ("deletion", "neg"): 1, ("insertion", "pos"): 1, ("insertion", "neg"): -1}


@dataclass(frozen=True)
class Order:
    """One pixel order: a map (or a baseline) read in one sign."""

    map: str  # map array name, or "random" / "uniform"
    method: str  # the registry method that wrote it, or "baseline"
    sign: str  # "pos" | "neg"


@dataclass
class Curves:
    """Raw outputs of the explained target along the curves, ``(N, O, S + 1)`` each (float64)."""

    deletion: np.ndarray
    insertion: np.ndarray


def map_signs(maps: np.ndarray, signed: bool) -> tuple[str, ...]:
    """The signs a map is evaluated in: those its values ``(N, H, W)`` take (``neg`` only if ``signed``).

    A map that is zero everywhere gets ``pos`` (it is then scored like the all-equal map).
    """
    signs = tuple(s for s, present in (("pos", bool((maps > 0).any())), ("neg", signed and bool((maps < 0).any())))
                  if present)
    return signs or ("pos",)


def random_map(image_id: str, shape: tuple[int, int], seed: int, grid: tuple[int, int] | None = None) -> np.ndarray:
    """The random baseline's map of one image ``(H, W)``, seeded by ``(seed, image_id)``.

    Uniform noise on ``grid`` (the target layer's resolution: as smooth as the
    layer maps, which are upsampled from it) resized bilinearly to ``shape``;
    ``grid`` None: noise per pixel.
    """
    rng = np.random.default_rng([int(seed), zlib.crc32(str(image_id).encode("utf-8"))])
    if grid is None or tuple(grid) == tuple(shape):
        return rng.random(shape, dtype=np.float64).astype(np.float32)
    noise = torch.from_numpy(rng.random(tuple(grid), dtype=np.float64))[None, None]
    return F.interpolate(noise, size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy().astype(np.float32)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``x`` (N, C, H, W) with ``sigma`` pixels, reflected borders."""
    if sigma <= 0:
        return x.clone()
    h, w = x.shape[-2:]
    radius = max(1, min(int(math.ceil(3 * sigma)), h - 1, w - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def make_substrate(x: Tensor, kind: str, blur_sigma: float) -> Tensor:
    """The substrate of ``x`` (N, 3, H, W) in the model's input space: ``mean`` colour, ``blur`` or ``zero``.

    ``blur_sigma`` is a fraction of the image side (0.0625: 4 px at 64 px).
    """
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()
    if kind == "blur":
        return gaussian_blur(x, blur_sigma * max(x.shape[-2:]))
    if kind == "zero":
        return torch.zeros_like(x)
    raise ValueError(f"validity.substrate: unknown substrate {kind!r}; one of {', '.join(SUBSTRATES)}")


def tie_groups(scores: Tensor) -> tuple[Tensor, Tensor]:
    """For each pixel of ``scores`` (M, P): pixels strictly more important, and the size of its tie group.

    Returns ``before`` and ``count``, both ``(M, P)`` float32: pixel ``p``'s
    group occupies ranks ``before .. before + count`` (most important first).
    """
    sorted_scores, _ = torch.sort(scores, dim=1)
    p = scores.shape[1]
    after = torch.searchsorted(sorted_scores, scores.contiguous(), right=True)  # pixels <= score
    below = torch.searchsorted(sorted_scores, scores.contiguous(), right=False)  # pixels < score
    before = (p - after).to(torch.float32)
    count = (after - below).to(torch.float32)
    return before, count


def removal_weights(before: Tensor, count: Tensor, k: Tensor) -> Tensor:
    """How much of each pixel is replaced once ``k`` pixels' worth is: ``clip((k - before) / count, 0, 1)``.

    ``before``, ``count`` (B, P) from :func:`tie_groups`; ``k`` (B,) pixels
    (fractional allowed). The weights of a row sum to ``k``.
    """
    return ((k[:, None] - before) / count).clamp(0.0, 1.0)


def _jobs(n_images: int, n_orders: int, steps: int) -> np.ndarray:
    """The interior points of every curve: rows ``(image, order, step, curve)`` (curve 0 deletion, 1 insertion)."""
    grid = np.stack(np.meshgrid(np.arange(n_images), np.arange(n_orders), np.arange(1, steps), np.arange(2),
                                indexing="ij"), axis=-1)
    return grid.reshape(-1, 4)


def _perturbed(x: Tensor, subs: tuple[Tensor, Tensor], groups: tuple[Tensor, Tensor], job: np.ndarray,
               n_orders: int, steps: int) -> Tensor:
    """The perturbed images ``(B, 3, H, W)`` of a batch of jobs ``(B, 4)``."""
    device = x.device
    img = torch.as_tensor(job[:, 0], device=device)
    row = img * n_orders + torch.as_tensor(job[:, 1], device=device)
    pixels = x.shape[-2] * x.shape[-1]
    k = torch.as_tensor(job[:, 2], device=device, dtype=torch.float32) * (pixels / steps)
    w = removal_weights(groups[0][row], groups[1][row], k).view(len(job), 1, *x.shape[-2:]).to(x.dtype)
    deletion = torch.as_tensor(job[:, 3] == 0, device=device).view(-1, 1, 1, 1)
    base = torch.where(deletion, x[img], subs[1][img])
    dest = torch.where(deletion, subs[0][img], x[img])
    return base + w * (dest - base)


def _forward(model: nn.Module, target: Callable[[Tensor], Tensor], batches: Iterator[Tensor]) -> Iterator[Tensor]:
    with torch.no_grad():
        for xb in batches:
            yield target(model(xb)).double().cpu()


def perturbation_curves(
    model: nn.Module, target: Callable[[Tensor], Tensor], x: Tensor, scores: Tensor, steps: int,
    deletion_substrate: Tensor, insertion_substrate: Tensor, batch_size: int = 64,
) -> Curves:
    """Deletion and insertion curves of ``x`` (N, 3, H, W) for pixel orders ``scores`` (N, O, H, W).

    Higher score = earlier. Returns the raw target outputs ``(N, O, steps + 1)``;
    the substrates are ``(N, 3, H, W)``. The model must be in eval mode.
    """
    n, o = scores.shape[:2]
    if tuple(scores.shape[-2:]) != tuple(x.shape[-2:]) or scores.shape[0] != len(x):
        raise ValueError(f"orders {tuple(scores.shape)} do not match the images {tuple(x.shape)}")
    if steps < 1:
        raise ValueError(f"validity.steps must be >= 1, got {steps}")
    clean, gone, blurred = (torch.cat(list(_forward(model, target, iter(t.split(batch_size)))))
                            for t in (x, deletion_substrate, insertion_substrate))
    groups = tie_groups(scores.reshape(n * o, -1).to(x.device, torch.float32))
    jobs = _jobs(n, o, steps)
    out = np.empty(len(jobs), dtype=np.float64)
    progress = Progress(len(jobs), "faithfulness: perturbed images", logger, every=30.0)
    subs = (deletion_substrate, insertion_substrate)
    batches = (_perturbed(x, subs, groups, jobs[s:s + batch_size], o, steps) for s in range(0, len(jobs), batch_size))
    done = 0
    for y in _forward(model, target, batches):
        out[done:done + len(y)] = y.numpy()
        done += len(y)
        progress.update(done)
    return _assemble(out, jobs, clean.numpy(), gone.numpy(), blurred.numpy(), n, o, steps)


def _assemble(out: np.ndarray, jobs: np.ndarray, clean: np.ndarray, gone: np.ndarray, blurred: np.ndarray,
              n: int, o: int, steps: int) -> Curves:
    deletion = np.empty((n, o, steps + 1))
    insertion = np.empty((n, o, steps + 1))
    deletion[:, :, 0], deletion[:, :, steps] = clean[:, None], gone[:, None]
    insertion[:, :, 0], insertion[:, :, steps] = blurred[:, None], clean[:, None]
    for curve, arr in ((0, deletion), (1, insertion)):
        sel = jobs[:, 3] == curve
        arr[jobs[sel, 0], jobs[sel, 1], jobs[sel, 2]] = out[sel]
    return Curves(deletion, insertion)


def output_scale(clean: np.ndarray) -> float:
    """The normalisation scale: the standard deviation (ddof 0) of the clean outputs; 1 when they do not vary."""
    clean = np.asarray(clean, dtype=np.float64)
    return 1.0 if outputs_constant(clean) else float(clean.std())


def outputs_constant(clean: np.ndarray) -> bool:
    """Whether the clean outputs ``(N,)`` do not vary (fewer than two, or a spread at rounding level)."""
    clean = np.asarray(clean, dtype=np.float64)
    return clean.size < 2 or float(clean.std()) <= 1e-12 * (1.0 + float(np.abs(clean).max()))


def normalise(curves: np.ndarray, scale: float) -> np.ndarray:
    """Curves ``(..., S + 1)`` as the change from their first point, in units of ``scale``."""
    return (curves - curves[..., :1]) / scale


def auc(curves: np.ndarray) -> np.ndarray:
    """Area under normalised curves ``(..., S + 1)`` over the fraction 0..1 (trapezoid), ``(...)``."""
    steps = curves.shape[-1] - 1
    return (curves[..., 1:] + curves[..., :-1]).sum(axis=-1) / (2.0 * steps)


def order_scores(maps: Mapping[str, np.ndarray], orders: Sequence[Order], image_ids: Sequence[str],
                 seed: int, grid: tuple[int, int] | None = None) -> Tensor:
    """The pixel-order scores ``(N, O, H, W)`` of ``orders`` from ``maps`` (name -> (N, H, W)) and the baselines.

    ``grid``: the random map's resolution (:func:`random_map`).
    """
    first = next(iter(maps.values()))
    n, shape = first.shape[0], first.shape[1:]
    out = np.empty((n, len(orders), *shape), dtype=np.float32)
    for j, order in enumerate(orders):
        if order.map == RANDOM:
            values = np.stack([random_map(i, shape, seed, grid) for i in image_ids])
        elif order.map == UNIFORM:
            values = np.zeros((n, *shape), dtype=np.float32)
        else:
            values = np.asarray(maps[order.map], dtype=np.float32)
        if not np.isfinite(values).all():
            raise ValueError(f"map {order.map!r} has NaN or infinite values; rerun compute_heatmaps")
        out[:, j] = values if order.sign == "pos" else -values
    return torch.from_numpy(out)


def faithfulness_rows(curves: Curves, orders: Sequence[Order], image_ids: Sequence[str], scale: float,
                      steps: int) -> pd.DataFrame:
    """One row per (image, order): normalised AUCs, gains over the random map, the curves (faithfulness.parquet).

    ``gain`` = expected direction x (AUC - the random map's AUC on the same
    image): > 0 when the map's order moves the output more in the direction
    its sign predicts than a random order does.
    """
    names = [o.map for o in orders]
    if RANDOM not in names:
        raise ValueError("the orders must include the random baseline")
    r = names.index(RANDOM)
    dele, ins = normalise(curves.deletion, scale), normalise(curves.insertion, scale)
    d_auc, i_auc = auc(dele), auc(ins)  # (N, O)
    n, o = d_auc.shape
    e_del = np.array([EXPECTED[("deletion", x.sign)] for x in orders], dtype=np.float64)
    e_ins = np.array([EXPECTED[("insertion", x.sign)] for x in orders], dtype=np.float64)
    return pd.DataFrame({
        "image_id": np.repeat(np.asarray(list(image_ids), dtype=object), o),
        "map": np.tile(np.asarray(names, dtype=object), n),
        "method": np.tile(np.asarray([x.method for x in orders], dtype=object), n),
        "sign": np.tile(np.asarray([x.sign for x in orders], dtype=object), n),
        "steps": np.full(n * o, steps, dtype=np.int32),
        "deletion_auc": d_auc.reshape(-1),
        "insertion_auc": i_auc.reshape(-1),
        "deletion_gain": (e_del * (d_auc - d_auc[:, r:r + 1])).reshape(-1) + 0.0,
        "insertion_gain": (e_ins * (i_auc - i_auc[:, r:r + 1])).reshape(-1) + 0.0,
        "y_clean": np.repeat(curves.deletion[:, 0, 0], o),
        "y_deletion_substrate": np.repeat(curves.deletion[:, 0, -1], o),
        "y_insertion_substrate": np.repeat(curves.insertion[:, 0, 0], o),
        "scale": np.full(n * o, scale, dtype=np.float64),
        "deletion_curve": list(dele.reshape(n * o, -1)),
        "insertion_curve": list(ins.reshape(n * o, -1)),
    })
