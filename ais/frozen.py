"""Frozen backbones (``train.freeze_backbone``): only the head trains, on features computed once.

**What is frozen.** The head is the model's MLP head (``model.head: mlp``,
:class:`ais.models.MLPHead`) or else its output ``Linear`` (a linear probe:
for VGG's ``classifier`` head, the Linear on its 4096-d penultimate
features). Every other parameter gets ``requires_grad = False`` and every
module outside the head is kept in eval mode (:meth:`FrozenBackbone.keep_eval`),
so BatchNorm running statistics do not move, the backbone's dropout and
stochastic depth are off, and the backbone consumes no random numbers: the
head's dropout draws the same numbers as in an ordinary loop.

**Feature cache** (``train.cache_features``, default on). The features of an
image are the input of the head in eval mode: ``(N, D)``, computed once for
the train and val images (:func:`cache_features`) and kept on the CPU; the
training loop then runs the head only (:class:`FeatureDataset`). With
``train.augment`` (random horizontal flips, decided per (seed, epoch,
image) exactly as :class:`ais.images.ImageDataset` decides them), the
features of each train image's flipped copy are cached too and each epoch
picks the same copy the image loop would have flipped: the cached training
gives the same head as running the frozen backbone on every batch
(``cache_features: false``), to float rounding. The check that the head is
the model's last operation (``head(features) == model(x)`` on the first
batch) runs before training. Features larger than :data:`CACHE_LIMIT_BYTES`
are not cached (a log line says so): the frozen backbone then runs on every
batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ais.hooks import Hooks
from ais.images import load_batch
from ais.logs import Progress

logger = logging.getLogger(__name__)

#: Largest feature cache (train, flipped train and val features, float32) kept in memory.
CACHE_LIMIT_BYTES = 4 * 2**30


def head_module(family, model: nn.Module) -> tuple[str, nn.Module]:
    """``(name, module)`` of the trainable head: the :class:`~ais.models.MLPHead`, else the output Linear."""
    from ais.models import mlp_head

    head = mlp_head(model) or family.output_layer(model)
    name = next(n for n, m in model.named_modules() if m is head)
    return name, head


@dataclass
class FrozenBackbone:
    """A model whose parameters outside ``head`` are frozen (see the module docstring)."""

    model: nn.Module
    head_name: str
    head: nn.Module
    backbone: list[nn.Module]  # every module outside the head's subtree (the model itself included)
    params: list[nn.Parameter]  # the frozen parameters

    def release(self) -> None:
        """Give the frozen parameters ``requires_grad`` back (after training; their values are unchanged)."""
        for p in self.params:
            p.requires_grad_(True)

    def keep_eval(self) -> None:
        """Put every backbone module in eval mode, the head's modes untouched (call after ``model.train()``)."""
        for m in self.backbone:
            m.training = False  # not m.eval(): that recurses into the head, whose ancestors are backbone modules

    def full_state(self, head_state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The whole model's state dict with the head's tensors replaced by ``head_state`` (the head's own keys)."""
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        prefix = f"{self.head_name}."
        for key, value in head_state.items():
            if prefix + key not in state:
                raise KeyError(f"head tensor {key!r} has no place {prefix + key!r} in the model")
            state[prefix + key] = value
        return state


def freeze_backbone(family, model: nn.Module) -> FrozenBackbone:
    """Freeze every parameter outside the head (``requires_grad = False``) and put the backbone in eval mode."""
    name, head = head_module(family, model)
    inside = {id(m) for m in head.modules()}
    head_params = {id(p) for p in head.parameters()}
    params = [p for p in model.parameters() if id(p) not in head_params and p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    out = FrozenBackbone(model, name, head, [m for m in model.modules() if id(m) not in inside], params)
    out.keep_eval()
    logger.info("frozen backbone: %d parameters frozen; the head %s (%s, %d parameters) trains",
                sum(p.numel() for p in params), name,
                type(head).__name__, sum(p.numel() for p in head.parameters()))
    return out


def features(frozen: FrozenBackbone, paths: Sequence[str], size: int, normalization: str, batch_size: int,
             device: torch.device, flips: bool = False, amp: torch.dtype | None = None) -> tuple[Tensor, Tensor | None]:
    """The head's inputs ``(N, D)`` float32 on the CPU for the images at ``paths`` (and of their flipped copies).

    The model runs in eval mode (modes restored afterwards). On the first
    batch the head's output on the kept features must equal the model's
    output, else :class:`ValueError` (the head is not the last operation).
    """
    model, head = frozen.model, frozen.head
    modes = {m: m.training for m in model.modules()}
    plain: list[Tensor] = []
    flipped: list[Tensor] = []
    progress = Progress(len(paths), "frozen backbone: features of images", logger, every=30.0, start_after=30.0)
    try:
        model.eval()
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            for i in range(0, len(paths), batch_size):
                x = load_batch(paths[i:i + batch_size], size, normalization).to(device)
                plain.append(_head_input(model, head, x, check=i == 0))
                if flips:
                    flipped.append(_head_input(model, head, torch.flip(x, dims=[3])))
                progress.update(min(i + batch_size, len(paths)))
    finally:
        for m, training in modes.items():
            m.train(training)
    return torch.cat(plain), (torch.cat(flipped) if flips else None)


def _head_input(model: nn.Module, head: nn.Module, x: Tensor, check: bool = False) -> Tensor:
    """The input of ``head`` when ``model`` runs on ``x`` ``(N, 3, H, W)``: ``(N, D)`` float32 on the CPU."""
    kept: dict[str, Tensor] = {}
    with Hooks() as hooks:
        hooks.keep_input(head, kept, "x")
        out = model(x)
    if "x" not in kept:
        raise ValueError(f"the head {type(head).__name__} did not run in the model's forward pass")
    feats = kept["x"]
    if check:
        again = head(feats)
        if again.shape != out.shape or not torch.allclose(again.float(), out.float(), rtol=1e-4, atol=1e-5):
            raise ValueError("train.cache_features: the model's output is not its head's output on the head's "
                             "input (something runs after the head); set train.cache_features: false")
    return feats.detach().float().cpu().reshape(len(x), -1)


class FeatureDataset(torch.utils.data.Dataset):
    """Cached features as items ``(feature (D,), y, index)``, like :class:`ais.images.ImageDataset`'s.

    With ``flipped`` (augmentation), item ``index`` of epoch ``e`` is the
    flipped copy's feature exactly when ``ImageDataset`` would flip the image:
    ``np.random.default_rng((seed, e, index)).random() < 0.5``.
    """

    def __init__(self, feats: Tensor, targets: np.ndarray, flipped: Tensor | None = None, seed: int = 0) -> None:
        if flipped is not None and flipped.shape != feats.shape:
            raise ValueError(f"flipped features {tuple(flipped.shape)} differ from features {tuple(feats.shape)}")
        self.feats, self.flipped, self.seed, self.epoch = feats, flipped, seed, 0
        self.targets = np.asarray(targets, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.feats)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int):
        x = self.feats[index]
        if self.flipped is not None and np.random.default_rng((self.seed, self.epoch, index)).random() < 0.5:
            x = self.flipped[index]
        return x, torch.tensor(self.targets[index], dtype=torch.float32), index


def cache_bytes(n_train: int, n_val: int, width: int, flips: bool) -> int:
    """Bytes of the float32 feature cache of ``n_train`` (twice with flips) and ``n_val`` images of ``width``."""
    return 4 * width * (n_train * (2 if flips else 1) + n_val)


def cached_datasets(frozen: FrozenBackbone, train_ds, val_ds, batch_size: int, device: torch.device,
                    amp: torch.dtype | None = None) -> tuple[FeatureDataset, FeatureDataset] | None:
    """Feature datasets replacing the image datasets ``train_ds`` / ``val_ds`` (``ImageDataset``), or ``None``.

    ``None`` (and a log line) when the cache would exceed :data:`CACHE_LIMIT_BYTES`.
    """
    width = _head_width(frozen.head)
    flips = bool(train_ds.augment)
    need = cache_bytes(len(train_ds), len(val_ds), width, flips) if width else 0
    if need > CACHE_LIMIT_BYTES:
        logger.info("frozen backbone: features would take %.1f GiB (> %.0f GiB); not cached, the backbone runs on "
                    "every batch", need / 2**30, CACHE_LIMIT_BYTES / 2**30)
        return None
    t0 = time.perf_counter()
    args = (train_ds.size, train_ds.normalization, batch_size, device)
    tr, tr_flip = features(frozen, train_ds.paths, *args, flips=flips, amp=amp)
    va, _ = features(frozen, val_ds.paths, *args, amp=amp)
    logger.info("frozen backbone: %d-d features of %d train%s and %d val image(s) computed once in %.1f s; the head "
                "trains on them", tr.shape[1], len(tr), " (and their flipped copies: train.augment)" if flips else "",
                len(va), time.perf_counter() - t0)
    return (FeatureDataset(tr, train_ds.targets, tr_flip, train_ds.seed),
            FeatureDataset(va, val_ds.targets))


def _head_width(head: nn.Module) -> int | None:
    """Input width of the head: the in_features of its first Linear (``None`` if it has none)."""
    first = next((m for m in head.modules() if isinstance(m, nn.Linear)), None)
    return None if first is None else int(first.in_features)
