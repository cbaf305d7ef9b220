"""Monte-Carlo dropout: the spread of a model's predictions over sampled dropout masks.

The dropout layers sample, everything else stays in eval mode (batch norm
uses its running statistics). Dropout sits in the head, so the network up to
the first dropout runs once: a forward hook on every dropout layer replaces
its (eval-mode, identity) output by ``input * mask / (1 - p)``; the first one
to fire also repeats its input ``S`` times along the batch, so every layer
after it runs once on ``S x N`` rows and the layers before it once on ``N``.

**Masks.** Layer ``l`` (in firing order) uses one bank ``M_l`` of shape
``(S, N, *shape)`` drawn from one ``torch.Generator`` seeded with ``seed``,
the banks drawn in firing order: sample ``s`` of image ``n`` keeps element
``e`` where ``M_l[s, n, e] >= p``. :func:`mc_full_passes` runs ``S`` complete
forward passes with the same banks (pass ``s`` uses ``M_l[s]``); it is the
slow, obvious reference that :func:`mc_samples` equals (the tests and
``benchmarks/mc_dropout.py`` check it). ``nn.Dropout`` masks elements;
``nn.Dropout1d/2d/3d`` mask whole channels (shape ``(C, 1, ...)``). The masks
of an image depend on the seed and on the batch it is in (the bank covers
the batch).

**Summaries.** :func:`summarize` turns samples into per-image figures for a
task kind: ``regression`` (samples ``(S, N)``: ``mc_mean``, ``mc_std`` with
``ddof=0``) or ``classification`` (probabilities ``(S, N, K)``: mean
probability per class, predictive entropy ``H[mean p]`` and mutual
information ``H[mean p] - mean H[p]``, in nats).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ais.hooks import Hooks

logger = logging.getLogger(__name__)

__all__ = ["DROPOUT_TYPES", "dropout_layers", "has_dropout", "mc_full_passes", "mc_predict", "mc_samples", "spearman",
           "status", "summarize"]

#: Module types that Monte-Carlo dropout samples.
DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def dropout_layers(model: nn.Module) -> list[str]:
    """Names of the model's dropout layers with ``p > 0`` (registration order)."""
    return [name for name, m in model.named_modules() if isinstance(m, DROPOUT_TYPES) and m.p > 0]


def has_dropout(model: nn.Module) -> bool:
    """Whether Monte-Carlo dropout has anything to sample in ``model``."""
    return bool(dropout_layers(model))


class _Banks:
    """The mask banks ``M_l`` ``(S, N, *shape)``, drawn on first use in firing order from one generator."""

    def __init__(self, n_samples: int, seed: int, device: torch.device) -> None:
        self.n_samples = n_samples
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(seed))
        self.banks: list[Tensor] = []

    def bank(self, layer: int, module: nn.Module, per_image: Tensor) -> Tensor:
        """Keep-masks ``(S, N, *shape)`` of firing-order layer ``layer``, scaled by ``1 / (1 - p)``."""
        if layer == len(self.banks):
            shape = tuple(per_image.shape)
            if not isinstance(module, nn.Dropout):  # DropoutNd: one draw per channel
                shape = shape[:2] + (1,) * (len(shape) - 2)
            u = torch.rand((self.n_samples, *shape), generator=self.generator, device=per_image.device,
                           dtype=per_image.dtype)
            self.banks.append((u >= module.p).to(per_image.dtype) / (1.0 - module.p))
        return self.banks[layer]


def _dropout_modules(model: nn.Module) -> list[nn.Module]:
    modules = [m for _, m in model.named_modules() if isinstance(m, DROPOUT_TYPES) and m.p > 0]
    for m in modules:
        if m.p >= 1:
            raise ValueError(f"dropout layer {m!r}: p = 1 leaves nothing to sample")
    return modules


class _EvalMode:
    """Eval mode for the whole model while inside; every module's training flag restored on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = {m: m.training for m in model.modules()}

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for m, training in self.modes.items():
            m.train(training)


def mc_samples(model: nn.Module, x: Tensor, n_samples: int, seed: int = 0) -> Tensor:
    """``n_samples`` stochastic outputs of ``x`` (N, ...) with the layers before the first dropout run once.

    Returns ``(S, N, *out)``: sample ``s`` equals pass ``s`` of
    :func:`mc_full_passes` with the same seed. A model without dropout is
    refused (its samples would all be equal). The model is left as it was.
    """
    modules = _dropout_modules(model)
    if not modules:
        raise ValueError("the model has no dropout layer with p > 0: Monte-Carlo dropout has nothing to sample")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    banks = _Banks(n_samples, seed, x.device)
    fired: list[int] = []
    n = len(x)

    def hook(m: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        inp = inputs[0]
        first = not fired
        fired.append(1)
        per_image = inp if first else inp[:n]
        bank = banks.bank(len(fired) - 1, m, per_image)  # (S, N, *shape)
        if first:  # the batch becomes S x N rows here: everything after runs once on all samples
            return (inp[None] * bank).reshape(n_samples * n, *inp.shape[1:])
        if inp.shape[0] != n_samples * n:
            raise ValueError(f"dropout layer {m!r} sees {inp.shape[0]} rows, expected {n_samples * n}: "
                             "something bypasses the first dropout (a skip connection); use mc_full_passes")
        return inp * bank.reshape(n_samples * n, *bank.shape[2:])

    with _EvalMode(model), Hooks() as hooks, torch.no_grad():
        for m in modules:
            hooks.add(m, hook)
        out = model(x)
    if not fired:
        raise ValueError("no dropout layer ran in the forward pass: nothing was sampled")
    return out.reshape(n_samples, n, *out.shape[1:])


def mc_full_passes(model: nn.Module, x: Tensor, n_samples: int, seed: int = 0,
                   which: Sequence[int] | None = None) -> Tensor:
    """The reference: ``n_samples`` complete forward passes of ``x`` (N, ...), pass ``s`` with masks ``M_l[s]``.

    Returns ``(S, N, *out)``, or only the passes ``which`` (``(len(which), N,
    *out)``, the banks still drawn for ``n_samples``). Slow (the whole network
    runs once per pass); the oracle that :func:`mc_samples` must equal.
    """
    modules = _dropout_modules(model)
    if not modules:
        raise ValueError("the model has no dropout layer with p > 0: Monte-Carlo dropout has nothing to sample")
    banks = _Banks(n_samples, seed, x.device)
    state = {"sample": 0, "layer": 0}

    def hook(m: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        bank = banks.bank(state["layer"], m, inputs[0])
        state["layer"] += 1
        return inputs[0] * bank[state["sample"]]

    outs = []
    with _EvalMode(model), Hooks() as hooks, torch.no_grad():
        for m in modules:
            hooks.add(m, hook)
        for s in (range(n_samples) if which is None else which):
            state["sample"], state["layer"] = int(s), 0
            outs.append(model(x))
    return torch.stack(outs)


def _entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats along the last axis (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=-1)


def summarize(samples: np.ndarray, kind: str) -> dict[str, np.ndarray]:
    """Per-image figures of Monte-Carlo samples.

    ``regression``: ``samples`` ``(S, N)`` predictions -> ``mc_mean`` and
    ``mc_std`` ``(N,)`` (population standard deviation). ``classification``:
    ``samples`` ``(S, N, K)`` class probabilities -> ``mc_mean_probability``
    ``(N, K)``, ``mc_entropy`` ``(N,)`` (predictive entropy of the mean
    probability) and ``mc_mutual_information`` ``(N,)`` (entropy of the mean
    minus the mean entropy: the part of the uncertainty due to the weights).
    """
    s = np.asarray(samples, dtype=np.float64)
    if kind == "regression":
        if s.ndim != 2:
            raise ValueError(f"regression samples must be (S, N), got {s.shape}")
        return {"mc_mean": s.mean(axis=0), "mc_std": s.std(axis=0)}
    if kind == "classification":
        if s.ndim != 3:
            raise ValueError(f"classification samples must be (S, N, K) probabilities, got {s.shape}")
        mean = s.mean(axis=0)
        entropy = _entropy(mean)
        return {"mc_mean_probability": mean, "mc_entropy": entropy,
                "mc_mutual_information": entropy - _entropy(s).mean(axis=0)}
    raise ValueError(f"unknown task kind {kind!r}: regression or classification")


def mc_predict(
    model: nn.Module,
    paths: Sequence[str],
    size: int,
    normalization: str,
    batch_size: int,
    n_samples: int,
    seed: int,
    predictions: Callable[[Tensor], Tensor],
) -> np.ndarray:
    """Samples ``(S, N)`` (or ``(S, N, K)``) of ``predictions(output)`` for the images at ``paths``, float64.

    Images are read as :func:`ais.training.predict` reads them, on the
    model's device; batch ``b`` is sampled with seed ``seed + b``.
    """
    from ais.images import load_batch
    from ais.logs import Progress

    device = next(model.parameters()).device
    progress = Progress(len(paths), f"MC dropout ({n_samples} samples)", logger)
    out: list[np.ndarray] = []
    for b, start in enumerate(range(0, len(paths), batch_size)):
        x = load_batch(paths[start:start + batch_size], size, normalization).to(device)
        raw = mc_samples(model, x, n_samples, seed + b)  # (S, n, *out)
        flat = predictions(raw.reshape(-1, *raw.shape[2:]))
        out.append(flat.reshape(n_samples, len(x), *flat.shape[1:]).double().cpu().numpy())
        progress.update(min(start + batch_size, len(paths)))
    return np.concatenate(out, axis=1) if out else np.empty((n_samples, 0))


def status(model: nn.Module, n_samples: int) -> dict[str, object]:
    """What Monte-Carlo dropout does for ``model``: ``sampled`` or why not (``off``, ``no dropout``)."""
    layers = dropout_layers(model)
    if n_samples <= 0:
        return {"status": "off", "mc_samples": 0, "dropout_layers": layers,
                "reason": "uncertainty.mc_samples is 0"}
    if not layers:
        return {"status": "no dropout", "mc_samples": 0, "dropout_layers": [],
                "reason": "the model's head has no dropout layer, so Monte-Carlo dropout has no spread to show; "
                          "set model.head_dropout (e.g. 0.2) to add one, or use model.head: mlp (model.mlp.dropout)"}
    return {"status": "sampled", "mc_samples": int(n_samples), "dropout_layers": layers, "reason": None}


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman rank correlation of finite pairs (None with fewer than 3 or a constant side)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return None
    return float(spearmanr(a[ok], b[ok]).statistic)
