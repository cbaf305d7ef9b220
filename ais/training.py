"""Fine-tuning, resumable after a kill, and prediction: tensors and tables in, a trained model out.

:func:`train` fits a model to the manifest's labelled ``train`` split for a
task (:mod:`ais.tasks`): the task encodes the targets
(:meth:`~ais.tasks.Task.fit_encoding`, :meth:`~ais.tasks.Task.encode`),
gives the loss, the validation loss and the epoch scores, and folds its
encoding into the family's output layer when training ends, so the returned
model's raw output is the prediction on the training scale. The best epoch
is the one with the lowest validation loss (:attr:`~ais.tasks.Task.selection`);
training stops early after ``patience`` epochs without a lower one, and the
best epoch's weights are kept.

After every epoch a resume state (model, optimiser, scheduler, grad scaler,
RNG states, history) is written atomically to the resume folder with
``torch.save`` and read back with ``torch.load(weights_only=True)``; a rerun
with the same configuration and data continues after the last completed
epoch, and on CPU ends with the same weights as an uninterrupted run. The
stage :mod:`ais.stages.finetune_model` writes the outputs and deletes the
resume folder after success.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ais import io
from ais.config import config_section
from ais.errors import UserError
from ais.families import Family
from ais.images import ImageDataset, load_batch
from ais.logs import Progress
from ais.provenance import config_hash, file_hash
from ais.tables import LABELLED_SPLITS
from ais.tasks import Task, get_task

logger = logging.getLogger(__name__)

RESUME_FORMAT = "ais-train-resume-v1"
PROGRESS_EVERY = 30.0  # seconds between progress lines inside a long epoch
EpochCallback = Callable[[int, dict], None]


def history_columns(task: Task) -> tuple[str, ...]:
    """Columns of ``history.csv``: epoch, losses, the task's epoch metrics, learning rate, seconds."""
    return ("epoch", "train_loss", "val_loss", *task.epoch_metrics, "lr", "seconds")


def manifest_data_hash(manifest: pd.DataFrame) -> str:
    """SHA-256 of the manifest's ``image_id``, ``path``, ``y_true`` and ``split``, row by row."""
    h = hashlib.sha256()
    for image_id, path, y, split in manifest[["image_id", "path", "y_true", "split"]].itertuples(index=False):
        y = None if pd.isna(y) else float(y)
        h.update(json.dumps([str(image_id), str(path), y, str(split)]).encode())
        h.update(b"\n")
    return h.hexdigest()


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype on ``device``: bf16 on CUDA when supported, else fp16; none on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# ---------------------------------------------------------------------------
# Learning-rate schedule


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based).

    ``cosine``: linear warm-up over ``warmup_steps``, then cosine decay to 0 at
    ``total_steps``. ``none``: warm-up, then constant. ``onecycle``: the
    one-cycle policy of ``torch.optim.lr_scheduler.OneCycleLR`` (cosine rise from
    1/25 over the warm-up, 30 % of the steps when there is none, then cosine
    decay to 1/25e4); it replaces the linear warm-up.
    """
    if kind == "onecycle":
        rise = warmup_steps if warmup_steps > 0 else max(1, round(0.3 * total_steps))
        start, end = 1 / 25, 1 / 25e4
        if step < rise:
            t = step / rise
            return 1 + (start - 1) * (1 + math.cos(math.pi * t)) / 2
        t = min(1.0, (step - rise) / max(1, total_steps - rise))
        return end + (1 - end) * (1 + math.cos(math.pi * t)) / 2
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "none":
        return 1.0
    if kind == "cosine":
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return (1 + math.cos(math.pi * t)) / 2
    raise ValueError(f"train.scheduler={kind!r}: choose cosine, onecycle or none")


# ---------------------------------------------------------------------------
# Prediction and evaluation


def predict(
    model: nn.Module,
    paths: Sequence[str | os.PathLike],
    size: int,
    normalization: str = "imagenet",
    batch_size: int = 32,
    device: str | torch.device | None = None,
    task: Task | None = None,
) -> np.ndarray:
    """The task's predictions (default: regression, shape ``(N,)``) for the images at ``paths``, float64.

    Full precision, eval mode (the model's mode is restored afterwards).
    ``device`` defaults to the device of the model's parameters.
    """
    task = task if task is not None else get_task("regression")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for i in range(0, len(paths), batch_size):
                x = load_batch(paths[i : i + batch_size], size, normalization).to(device)
                out.append(task.predictions(model(x)).double().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.empty(0)


def split_metrics(manifest: pd.DataFrame, y_pred: np.ndarray, task: Task, n_boot: int, seed: int) -> dict[str, Any]:
    """The task's test metrics of the labelled test, val and train rows (train without intervals)."""
    labelled = manifest["y_true"].notna().to_numpy()
    y_all = manifest["y_true"].to_numpy(np.float64)
    out = {}
    for split, boot in (("test", n_boot), ("val", n_boot), ("train", 0)):  # train fit: optimistic anyway
        rows = (manifest["split"] == split).to_numpy() & labelled
        out[split] = task.test_metrics(y_all[rows], y_pred[rows], boot, seed)
    return out


def training_curve(history: pd.DataFrame, best_epoch: int, task: Task):
    """Train/val loss and the task's last epoch metric per epoch, the best epoch marked: a Figure."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import MaxNLocator

    metric = task.epoch_metrics[-1]
    label = metric.removeprefix("val_").upper()
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax_loss, ax_metric = fig.subplots(1, 2)
    ax_loss.plot(history["epoch"], history["train_loss"], "o-", label="train")
    ax_loss.plot(history["epoch"], history["val_loss"], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel=task.loss_label, title="Loss")
    ax_loss.legend()
    ax_metric.plot(history["epoch"], history[metric], "o-", color="C2")
    ax_metric.set(xlabel="epoch", ylabel=label, title=f"Validation {label}")
    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.axvline(best_epoch, color="0.5", ls="--", lw=1, label="best epoch")
        ax.grid(alpha=0.3)
    return fig


# ---------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: nn.Module  # best epoch's weights, target encoding folded in, eval mode
    encoding: dict[str, float]  # the task's target encoding (regression: target_mean, target_std)
    history: pd.DataFrame  # one row per epoch, columns history_columns(task)
    best_epoch: int
    best_val_loss: float
    epochs_max: int
    stopped_early: bool
    seconds: float  # training time over every run of this training, resumed ones included
    data_hash: str  # manifest_data_hash of the manifest
    amp: torch.dtype | None  # the autocast dtype used


@dataclass
class _Setup:
    """What stays fixed during a training."""

    task: Task
    model: nn.Module
    device: torch.device
    amp: torch.dtype | None
    seed: int
    tcfg: dict[str, Any]
    resume_dir: Path
    run_hash: str
    workers: int = 0  # decoding processes (:mod:`ais.pipeline`); 0: decode in this process, cached
    frozen: Any = None  # train.freeze_backbone: the ais.frozen.FrozenBackbone (its backbone stays in eval mode)

    @property
    def epochs(self) -> int:
        return int(self.tcfg["epochs"])

    @property
    def batch_size(self) -> int:
        return int(self.tcfg["batch_size"])

    @property
    def patience(self) -> int:
        return int(self.tcfg["patience"])


@dataclass
class _Data:
    """The labelled splits, the target encoding and the datasets of the train and val images."""

    parts: dict[str, pd.DataFrame]
    data_hash: str
    encoding: dict[str, float]
    train_ds: ImageDataset
    val_ds: ImageDataset
    y_val: np.ndarray
    y_val_encoded: np.ndarray


@dataclass
class _Optim:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler


@dataclass
class _State:
    """What changes from epoch to epoch (and is saved in the resume state)."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    since_best: int = 0
    best_file: str = ""
    best_state: dict[str, torch.Tensor] | None = None
    seconds: float = 0.0
    start_epoch: int = 1


def train(
    manifest: pd.DataFrame,
    task: Task,
    family: Family,
    model: nn.Module,
    model_cfg: Mapping[str, Any],
    train_cfg: Mapping[str, Any],
    seed: int,
    device: str | torch.device,
    resume_dir: str | os.PathLike,
    on_epoch_end: EpochCallback | None = None,
    workers: int = 0,
) -> TrainResult:
    """Fit ``model`` (built by ``family`` after ``set_seed(seed)``) to the manifest's train split.

    ``model_cfg`` and ``train_cfg`` are the config's ``model`` and ``train``
    sections (missing keys take the schema's defaults). Torch's global
    generator continues from where building the model left it (dropout
    draws from it). Mixed precision (:func:`amp_dtype`) is used on CUDA
    only. ``resume_dir`` holds the resume state; ``on_epoch_end(epoch,
    record)`` is called after each epoch's resume state is on disk.
    ``workers`` processes decode the next batches while the model trains
    (the same batches and numbers as ``workers=0``, which decodes in this
    process and keeps the decoded images for the later epochs). Raises
    ``ValueError`` without 2 labelled train images or a labelled val image,
    ``FloatingPointError`` when the loss diverges.
    """
    mcfg, tcfg = config_section("model", model_cfg), config_section("train", train_cfg)
    _check_mlp_head(model, mcfg)
    device = torch.device(device)
    amp = amp_dtype(device)
    data = _split_data(manifest, task, mcfg, tcfg, seed, cache=workers == 0)
    run_hash = _run_hash(mcfg, tcfg, seed, data.data_hash, device, amp)
    setup = _Setup(task, model.to(device), device, amp, seed, tcfg, Path(resume_dir), run_hash, workers)
    _freeze_backbone(setup, family, data)
    optim = _optimiser(setup, len(data.train_ds))
    state = _resume_or_start(setup, optim)
    logger.info(
        "training %s/%s (weights %s, task %s) on %s%s: %d train, %d val, %d test images at %d px; "
        "target encoding %s; selection: %s",
        mcfg["arch"], mcfg["head"], mcfg["weights"], task.name, device, f" with {amp} autocast" if amp else "",
        len(data.train_ds), len(data.val_ds), len(data.parts["test"]), int(mcfg["input_size"]),
        ", ".join(f"{k} {v:.4g}" for k, v in data.encoding.items()), task.selection,
    )
    _epoch_loop(setup, data, optim, state, on_epoch_end)
    _unfreeze_setup(setup, state)
    return _finish(setup, family, data, state)


def check_splits(manifest: pd.DataFrame, source: str = "the manifest") -> dict[str, pd.DataFrame]:
    """The labelled rows of each split; :class:`ais.errors.UserError` (naming ``source``) when training cannot run."""
    labelled = manifest[manifest["y_true"].notna()]
    parts = {s: labelled[labelled["split"] == s] for s in LABELLED_SPLITS}
    unlabelled_in_splits = int(((manifest["split"] != "unlabelled") & manifest["y_true"].isna()).sum())
    if unlabelled_in_splits:
        logger.warning("%d train/val/test row(s) have no score; they are predicted but not used", unlabelled_in_splits)
    if len(parts["train"]) < 2:
        raise UserError(f"{source}: {len(parts['train'])} labelled train image(s); training needs at least 2")
    if len(parts["val"]) < 1:
        raise UserError(
            f"{source}: no labelled val images; model selection needs a validation split (data.splits.val > 0)"
        )
    return parts


def _split_data(
    manifest: pd.DataFrame, task: Task, mcfg: Mapping[str, Any], tcfg: Mapping[str, Any], seed: int,
    cache: bool = True,
) -> _Data:
    """The labelled splits (checked), the target encoding fitted on train, and the datasets."""
    parts = check_splits(manifest)
    y_train = parts["train"]["y_true"].to_numpy(np.float64)
    encoding = task.fit_encoding(y_train)
    size, norm = int(mcfg["input_size"]), mcfg["normalization"]
    train_ds = ImageDataset(parts["train"]["path"].tolist(), size, norm, targets=task.encode(y_train, encoding), cache=cache,
                            augment=bool(tcfg["augment"]), seed=seed)
    y_val = parts["val"]["y_true"].to_numpy(np.float64)
    y_val_encoded = task.encode(y_val, encoding)
    val_ds = ImageDataset(parts["val"]["path"].tolist(), size, norm, targets=y_val_encoded, cache=cache)
    return _Data(parts, manifest_data_hash(manifest), encoding, train_ds, val_ds, y_val, y_val_encoded)


def _check_mlp_head(model: nn.Module, mcfg: Mapping[str, Any]) -> None:
    """Refuse a model whose MLP head was not built with ``model.mlp`` (``build_model(..., mlp=mcfg["mlp"])``)."""
    from ais.models import MLP_DEFAULTS, mlp_head

    head = mlp_head(model)
    if mcfg.get("head") != "mlp" or head is None:
        return
    wanted = {**MLP_DEFAULTS, **dict(mcfg.get("mlp") or {})}
    built = head.spec()
    if mcfg.get("head_dropout") is not None:  # model.head_dropout overrides the MLP's dropout
        wanted["dropout"] = float(mcfg["head_dropout"])
    if {k: (float(v) if k == "dropout" else v) for k, v in wanted.items()} != built:
        raise ValueError(f"model.mlp is {wanted} but the model's MLP head was built with {built}; build it with "
                         "ais.models.build_model(..., mlp=model_cfg['mlp'])")


def _freeze_backbone(setup: _Setup, family: Family, data: _Data) -> None:
    """``train.freeze_backbone``: freeze all but the head (:mod:`ais.frozen`); with the feature cache the loop
    trains ``setup.model`` = the head on cached features (``data``'s datasets replaced)."""
    if not setup.tcfg.get("freeze_backbone"):
        return
    from ais import frozen

    setup.frozen = frozen.freeze_backbone(family, setup.model)
    if not setup.tcfg.get("cache_features", True):
        return
    cached = frozen.cached_datasets(setup.frozen, data.train_ds, data.val_ds, setup.batch_size, setup.device,
                                    setup.amp)
    if cached is not None:
        data.train_ds, data.val_ds = cached
        setup.model, setup.workers = setup.frozen.head, 0


def _unfreeze_setup(setup: _Setup, state: _State) -> None:
    """After a frozen-backbone training: the whole model again (its best state the whole model's), unfrozen."""
    if setup.frozen is None:
        return
    setup.frozen.release()
    if setup.model is setup.frozen.model:
        return
    assert state.best_state is not None
    state.best_state = setup.frozen.full_state(state.best_state)
    setup.model = setup.frozen.model


def _run_hash(
    mcfg: Mapping[str, Any], tcfg: Mapping[str, Any], seed: int, data_hash: str, device: torch.device,
    amp: torch.dtype | None,
) -> str:
    """The hash a resume state must carry to be continued: everything that changes the training."""
    run_config = {
        "format": RESUME_FORMAT,
        # target_layer and bootstrap do not change the training, only what is stored or reported
        "model": {k: v for k, v in mcfg.items() if k != "target_layer"},
        "train": {k: v for k, v in tcfg.items() if k != "bootstrap"},
        "seed": seed,
        "data_hash": data_hash,
        "device": device.type,
        "amp": str(amp),
    }
    weights_path = Path(str(mcfg["weights"])).expanduser()
    if weights_path.is_file():
        run_config["weights_sha256"] = file_hash(weights_path)
    return config_hash(run_config)


def _optimiser(setup: _Setup, n_train: int) -> _Optim:
    """Optimiser, learning-rate schedule (per optimiser step) and grad scaler (fp16 autocast only)."""
    tcfg = setup.tcfg
    steps_per_epoch = math.ceil(n_train / setup.batch_size)
    total_steps = setup.epochs * steps_per_epoch
    warmup_steps = int(tcfg["warmup_epochs"]) * steps_per_epoch
    kind = tcfg["scheduler"]
    opt_cls = torch.optim.AdamW if tcfg["optimizer"] == "adamw" else torch.optim.Adam
    optimizer = opt_cls(setup.model.parameters(), lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"]))

    def schedule(step: int) -> float:
        return lr_factor(step, total_steps, warmup_steps, kind)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(setup.device.type, enabled=setup.amp == torch.float16)
    return _Optim(optimizer, scheduler, scaler)


def _resume_or_start(setup: _Setup, optim: _Optim) -> _State:
    """The state of this training's resume state (model, optimiser, RNGs restored), or a fresh start."""
    saved = _load_resume(setup.resume_dir, setup.run_hash)
    if saved is None:
        if setup.resume_dir.exists():
            shutil.rmtree(setup.resume_dir)
        return _State()
    setup.model.load_state_dict(saved["model"])
    optim.optimizer.load_state_dict(saved["optimizer"])
    optim.scheduler.load_state_dict(saved["scheduler"])
    optim.scaler.load_state_dict(saved["scaler"])
    _set_rng_state(saved["rng"])
    state = _State(
        history=[dict(h) for h in saved["history"]],
        best_epoch=int(saved["best_epoch"]),
        best_val_loss=float(saved["best_val_loss"]),
        since_best=int(saved["epochs_since_best"]),
        best_file=saved["best_file"],
        best_state=load_file(str(setup.resume_dir / saved["best_file"]), device="cpu"),
        seconds=float(saved["seconds"]),
        start_epoch=int(saved["epoch"]) + 1,
    )
    logger.info("resuming from %s after epoch %d/%d", setup.resume_dir / "state.pt", state.start_epoch - 1,
                setup.epochs)
    return state


def _epoch_loop(
    setup: _Setup, data: _Data, optim: _Optim, state: _State, on_epoch_end: EpochCallback | None
) -> None:
    """Train, validate, keep the best weights and save the resume state, epoch by epoch, until done or patience."""
    stopped_early = state.since_best >= setup.patience
    for epoch in range(state.start_epoch, setup.epochs + 1):
        if stopped_early:
            break
        record = _run_epoch(setup, data, optim, epoch)
        state.seconds += record["seconds"]
        state.history.append(record)
        setup.resume_dir.mkdir(parents=True, exist_ok=True)
        _keep_best(setup, state, epoch, record["val_loss"])
        stopped_early = state.since_best >= setup.patience
        _save_resume(setup.resume_dir, _resume_state(setup, optim, state, epoch))
        _log_epoch(setup, state, epoch, record)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)


def _run_epoch(setup: _Setup, data: _Data, optim: _Optim, epoch: int) -> dict[str, float]:
    """One epoch of training and its validation: the epoch's history record."""
    t0 = time.perf_counter()
    train_loss, last_lr = _train_epoch(setup, data.train_ds, optim, epoch)
    if not math.isfinite(train_loss):
        raise FloatingPointError(
            f"training diverged in epoch {epoch} (train loss {train_loss}); lower train.lr (now {setup.tcfg['lr']})"
        )
    raw_val = _raw_outputs(setup, data.val_ds)
    val_loss = setup.task.val_loss(raw_val, data.y_val_encoded)
    val_pred = setup.task.decode(raw_val, data.encoding)
    seconds = time.perf_counter() - t0
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        **setup.task.epoch_scores(data.y_val, val_pred),
        "lr": last_lr,
        "seconds": seconds,
    }


def _train_epoch(setup: _Setup, ds: ImageDataset, optim: _Optim, epoch: int) -> tuple[float, float]:
    """One pass over ``ds``; returns (mean loss, learning rate of the last step).

    The order and the augmentations depend on (seed, epoch) only, so a resumed
    run repeats them exactly.
    """
    model, device, amp = setup.model, setup.device, setup.amp
    model.train()
    if setup.frozen is not None:  # train.freeze_backbone: BatchNorm statistics and backbone dropout stay still
        setup.frozen.keep_eval()
    ds.set_epoch(epoch)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([setup.seed, epoch]).generate_state(1)[0]))
    loader = torch.utils.data.DataLoader(ds, batch_size=setup.batch_size, shuffle=True, generator=gen,
                                         num_workers=setup.workers, pin_memory=device.type == "cuda")
    progress = _EpochProgress(epoch, setup.epochs, len(loader), len(ds))
    total, count, lr = 0.0, 0, optim.optimizer.param_groups[0]["lr"]
    for batch, (x, y, _) in enumerate(loader, start=1):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(x)
        loss = setup.task.loss(out, y)
        optim.optimizer.zero_grad(set_to_none=True)
        optim.scaler.scale(loss).backward()
        optim.scaler.step(optim.optimizer)
        optim.scaler.update()
        lr = optim.optimizer.param_groups[0]["lr"]
        optim.scheduler.step()
        total += float(loss.detach()) * len(x)
        count += len(x)
        progress.update(batch, count)
    return total / count, lr


class _EpochProgress:
    """Progress lines inside a long epoch (batches, images/s, the epoch's ETA) every PROGRESS_EVERY s.

    None in an epoch shorter than that, and none at its end: the epoch's own line follows.
    """

    def __init__(self, epoch: int, epochs: int, n_batches: int, n_images: int) -> None:
        self.epoch, self.epochs, self.n_batches, self.n_images = epoch, epochs, n_batches, n_images
        self.progress = Progress(n_images, "images", logger, every=PROGRESS_EVERY)

    def update(self, batch: int, images: int) -> None:
        if images >= self.n_images or time.perf_counter() - self.progress.start < PROGRESS_EVERY:
            return
        self.progress.what = f"epoch {self.epoch}/{self.epochs}: batch {batch}/{self.n_batches}, images"
        self.progress.update(images)


def _raw_outputs(setup: _Setup, ds: ImageDataset) -> np.ndarray:
    """Raw outputs for the (cached) images of ``ds``, in order: ``(N,)`` for one output, else ``(N, K)``."""
    model, device, amp, batch_size = setup.model, setup.device, setup.amp, setup.batch_size
    model.eval()
    out = []
    progress = Progress(len(ds), "validation: images", logger, every=PROGRESS_EVERY, start_after=PROGRESS_EVERY)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=setup.workers,
                                         pin_memory=device.type == "cuda")
    done = 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        for x, _, _ in loader:
            y = model(x.to(device, non_blocking=True)).float().cpu().numpy()
            out.append(y.reshape(-1) if setup.task.n_outputs == 1 else y.reshape(len(x), -1))
            done += len(x)
            progress.update(done)  # lines only in a validation longer than PROGRESS_EVERY s
    return np.concatenate(out).astype(np.float64) if out else np.empty(0)


def _keep_best(setup: _Setup, state: _State, epoch: int, val_loss: float) -> None:
    """A lower validation loss: keep these weights (in memory and in the resume folder)."""
    if val_loss < state.best_val_loss:
        state.best_epoch, state.best_val_loss, state.since_best = epoch, val_loss, 0
        state.best_state = _cpu_state(setup.model)
        state.best_file = f"best-{epoch:04d}.safetensors"
        io.write_bytes(setup.resume_dir / state.best_file, safetensors_bytes(state.best_state))
    else:
        state.since_best += 1


def _log_epoch(setup: _Setup, state: _State, epoch: int, record: Mapping[str, float]) -> None:
    eta = state.seconds / len(state.history) * (setup.epochs - epoch)
    scores = "  ".join(f"{k} {record[k]:.4f}" for k in setup.task.epoch_metrics)
    logger.info(
        "epoch %d/%d  train_loss %.4f  val_loss %.4f  %s  lr %.3g  %.1f s  ETA %s%s",
        epoch, setup.epochs, record["train_loss"], record["val_loss"], scores, record["lr"], record["seconds"],
        _duration(eta), "  (best)" if state.best_epoch == epoch else "",
    )


def _finish(setup: _Setup, family: Family, data: _Data, state: _State) -> TrainResult:
    """The best weights, the target encoding folded into the output layer, eval mode."""
    stopped_early = len(state.history) < setup.epochs
    if stopped_early:
        logger.info("early stopping after epoch %d: no lower val loss for %d epochs", state.history[-1]["epoch"],
                    state.since_best)
    assert state.best_state is not None  # at least one epoch ran (epochs >= 1)
    logger.info("best epoch %d (val loss %.4f)", state.best_epoch, state.best_val_loss)
    model = setup.model
    model.load_state_dict(state.best_state)
    setup.task.fold(family.output_layer(model), data.encoding)
    model.eval()
    return TrainResult(
        model=model,
        encoding=dict(data.encoding),
        history=pd.DataFrame(state.history, columns=list(history_columns(setup.task))),
        best_epoch=state.best_epoch,
        best_val_loss=state.best_val_loss,
        epochs_max=setup.epochs,
        stopped_early=stopped_early,
        seconds=state.seconds,
        data_hash=data.data_hash,
        amp=setup.amp,
    )


# ---------------------------------------------------------------------------
# Resume state


def _rng_state() -> dict[str, Any]:
    """Every global RNG state, as tensors and numbers (loadable with weights_only=True)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_gauss": float(gauss),
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": int(version),
        "python_gauss": math.nan if py_gauss is None else float(py_gauss),
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"]))
    gauss = None if math.isnan(state["python_gauss"]) else state["python_gauss"]
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), gauss))


def _resume_state(setup: _Setup, optim: _Optim, state: _State, epoch: int) -> dict[str, Any]:
    """The resume state after ``epoch`` (tensors and plain containers only)."""
    return {
        "format": RESUME_FORMAT,
        "config_hash": setup.run_hash,
        "epoch": epoch,
        "model": setup.model.state_dict(),
        "optimizer": optim.optimizer.state_dict(),
        "scheduler": optim.scheduler.state_dict(),
        "scaler": optim.scaler.state_dict(),
        "rng": _rng_state(),
        "history": state.history,
        "best_epoch": state.best_epoch,
        "best_val_loss": state.best_val_loss,
        "epochs_since_best": state.since_best,
        "best_file": state.best_file,
        "seconds": state.seconds,
    }


def _load_resume(resume_dir: Path, expected_hash: str) -> dict[str, Any] | None:
    """The resume state in ``resume_dir`` if it belongs to this run; otherwise ``None`` (and a log line)."""
    path = resume_dir / "state.pt"
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable for any reason: start over, say why
        logger.warning("resume state %s unreadable (%s: %s); starting over", path, type(exc).__name__, exc)
        return None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        logger.warning("resume state %s has an unknown format; starting over", path)
        return None
    if state.get("config_hash") != expected_hash:
        logger.warning(
            "resume state %s was written for another configuration or data set (hash %s, now %s); starting over",
            path, state.get("config_hash"), expected_hash,
        )
        return None
    if not (resume_dir / state["best_file"]).is_file():
        logger.warning("resume state %s: best weights %s missing; starting over", path, state["best_file"])
        return None
    return state


def _save_resume(resume_dir: Path, state: dict[str, Any]) -> None:
    with io.atomic_path(resume_dir / "state.pt") as tmp:
        torch.save(state, tmp)
    for old in resume_dir.glob("best-*.safetensors"):  # superseded best weights
        if old.name != state["best_file"]:
            old.unlink(missing_ok=True)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
