"""Fine-tuning of the realism regressor, resumable after a kill, and prediction.

:func:`train_model` regresses the manifest's ``y_true`` on the ``train``
split. Targets are standardised with the training mean and standard
deviation (loss: MSE on the standardised scale); before saving, that affine
map is folded into the last ``Linear`` so the stored model's raw output *is*
the predicted score. The best epoch is the one with the lowest validation
loss (same MSE); training stops early after ``patience`` epochs without a
lower one, and the best epoch's weights are kept.

After every epoch a resume state (model, optimiser, scheduler, grad scaler,
RNG states, history) is written atomically with ``torch.save`` and read back
with ``torch.load(weights_only=True)``; a rerun with the same configuration
and data continues after the last completed epoch, and on CPU ends with the
same weights as an uninterrupted run. It is deleted after success.

Outputs in ``out_dir``: ``model.safetensors`` and ``model.json``
(:func:`ais.models.save_checkpoint`), ``history.csv``,
``predictions.parquet`` (every manifest row), ``metrics.json`` and
``training_curve.png``.
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
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ais import io
from ais.config import load_schema
from ais.images import ImageDataset, load_batch
from ais.metrics import mae, regression_report, spearman
from ais.models import (
    build_model,
    configure_determinism,
    output_layer,
    resolve_target_layer,
    save_checkpoint,
    set_seed,
)
from ais.provenance import config_hash, file_hash, provenance
from ais.tables import PREDICTIONS_SCHEMA, SPLITS

RESUME_FORMAT = "ais-train-resume-v1"
SELECTION = "lowest validation loss (MSE on standardised targets)"
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_mae", "val_srcc", "lr", "seconds")
EpochCallback = Callable[[int, dict], None]


# ---------------------------------------------------------------------------
# Manifest


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read the manifest and check the columns training needs."""
    df = pd.read_parquet(path)
    missing = [c for c in ("image_id", "path", "y_true", "split") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise ValueError(f"{path}: unknown split value(s) {bad}; expected {', '.join(SPLITS)}")
    return df.reset_index(drop=True)


def manifest_data_hash(manifest: pd.DataFrame) -> str:
    """SHA-256 of the manifest's ``image_id``, ``path``, ``y_true`` and ``split``, row by row."""
    h = hashlib.sha256()
    for image_id, path, y, split in manifest[["image_id", "path", "y_true", "split"]].itertuples(index=False):
        y = None if pd.isna(y) else float(y)
        h.update(json.dumps([str(image_id), str(path), y, str(split)]).encode())
        h.update(b"\n")
    return h.hexdigest()


def config_section(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model`` or ``train`` section with the schema's defaults filled in; unknown keys refused."""
    props = load_schema()["properties"][name]["properties"]
    unknown = sorted(set(given) - set(props))
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(props)}")
    return {key: given.get(key, sub.get("default")) for key, sub in props.items()}


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
# Prediction


def predict(
    model: nn.Module,
    paths: Sequence[str | os.PathLike],
    size: int,
    normalization: str = "imagenet",
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Model outputs for the images at ``paths``: float64 array of shape ``(N,)``.

    Full precision, eval mode (the model's mode is restored afterwards).
    ``device`` defaults to the device of the model's parameters.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for i in range(0, len(paths), batch_size):
                x = load_batch(paths[i : i + batch_size], size, normalization).to(device)
                out.append(model(x).reshape(-1).double().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.empty(0)


def _predict_dataset(
    model: nn.Module, ds: ImageDataset, batch_size: int, device: torch.device, amp: torch.dtype | None
) -> np.ndarray:
    """Outputs ``(N,)`` for the (cached) images of ``ds``, in order."""
    model.eval()
    out = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        for i in range(0, len(ds), batch_size):
            x = torch.stack([ds[j][0] for j in range(i, min(i + batch_size, len(ds)))]).to(device)
            out.append(model(x).reshape(-1).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.empty(0)


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


def _load_resume(resume_dir: Path, expected_hash: str, log: logging.Logger) -> dict[str, Any] | None:
    """The resume state in ``resume_dir`` if it belongs to this run; otherwise ``None`` (and a log line)."""
    path = resume_dir / "state.pt"
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable for any reason: start over, say why
        log.warning("resume state %s unreadable (%s: %s); starting over", path, type(exc).__name__, exc)
        return None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        log.warning("resume state %s has an unknown format; starting over", path)
        return None
    if state.get("config_hash") != expected_hash:
        log.warning(
            "resume state %s was written for another configuration or data set (hash %s, now %s); starting over",
            path, state.get("config_hash"), expected_hash,
        )
        return None
    if not (resume_dir / state["best_file"]).is_file():
        log.warning("resume state %s: best weights %s missing; starting over", path, state["best_file"])
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


# ---------------------------------------------------------------------------
# Training


def train_model(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_cfg: Mapping[str, Any],
    train_cfg: Mapping[str, Any],
    seed: int,
    device: str | torch.device | None = None,
    log: logging.Logger = logging.getLogger(__name__),
    resume_dir: str | os.PathLike | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> dict[str, Any]:
    """Fine-tune a regressor on the manifest's train split; write the outputs to ``out_dir``.

    ``model_cfg`` and ``train_cfg`` are the config's ``model`` and ``train``
    sections (missing keys take the schema's defaults, except a missing
    ``target_layer``, which becomes ``auto``: the last Conv2d; it only
    decides what ``model.json`` records and is checked before training). ``device`` defaults to
    CUDA when available, else CPU; mixed precision (bf16, else fp16 with a
    grad scaler) is used on CUDA only. ``resume_dir`` (default
    ``out_dir/resume``) holds the resume state. ``on_epoch_end(epoch, record)``
    is called after each epoch's resume state is on disk. Returns the content
    of ``metrics.json``.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    resume_dir = Path(resume_dir) if resume_dir is not None else out_dir / "resume"
    mcfg, tcfg = config_section("model", model_cfg), config_section("train", train_cfg)
    if "target_layer" not in model_cfg:  # not a training setting; the stored default is the last Conv2d
        mcfg["target_layer"] = "auto"
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp: torch.dtype | None = None
    if device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    manifest = read_manifest(manifest_path)
    data_hash = manifest_data_hash(manifest)
    labelled = manifest[manifest["y_true"].notna()]
    parts = {s: labelled[labelled["split"] == s] for s in ("train", "val", "test")}
    unlabelled_in_splits = int(((manifest["split"] != "unlabelled") & manifest["y_true"].isna()).sum())
    if unlabelled_in_splits:
        log.warning("%d train/val/test row(s) have no score; they are predicted but not used", unlabelled_in_splits)
    if len(parts["train"]) < 2:
        raise ValueError(f"{manifest_path}: {len(parts['train'])} labelled train image(s); training needs at least 2")
    if len(parts["val"]) < 1:
        raise ValueError(
            f"{manifest_path}: no labelled val images; model selection needs a validation split (data.splits.val > 0)"
        )

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
    run_hash = config_hash(run_config)

    configure_determinism()
    set_seed(seed)
    model = build_model(mcfg["arch"], mcfg["head"], mcfg["weights"], progress=False)
    target_layer = resolve_target_layer(model, mcfg["target_layer"])  # fail before training, not after
    model.to(device)

    y_train = parts["train"]["y_true"].to_numpy(np.float64)
    mu = float(y_train.mean())
    sd = float(y_train.std())
    if not sd > 0:
        log.warning("all training scores equal %.4g; standardising with scale 1", mu)
        sd = 1.0
    size, norm = int(mcfg["input_size"]), mcfg["normalization"]
    train_ds = ImageDataset(
        parts["train"]["path"].tolist(), size, norm, targets=(y_train - mu) / sd, augment=bool(tcfg["augment"]), seed=seed
    )
    y_val = parts["val"]["y_true"].to_numpy(np.float64)
    val_ds = ImageDataset(parts["val"]["path"].tolist(), size, norm, targets=(y_val - mu) / sd)

    epochs, batch_size = int(tcfg["epochs"]), int(tcfg["batch_size"])
    steps_per_epoch = math.ceil(len(train_ds) / batch_size)
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(tcfg["warmup_epochs"]) * steps_per_epoch
    opt_cls = torch.optim.AdamW if tcfg["optimizer"] == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"]))
    kind = tcfg["scheduler"]

    def schedule(step: int) -> float:
        return lr_factor(step, total_steps, warmup_steps, kind)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    history: list[dict[str, float]] = []
    best_epoch, best_val_loss, since_best, best_file = 0, math.inf, 0, ""
    best_state: dict[str, torch.Tensor] | None = None
    train_seconds = 0.0
    start_epoch = 1
    state = _load_resume(resume_dir, run_hash, log)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        history = [dict(h) for h in state["history"]]
        best_epoch, best_val_loss = int(state["best_epoch"]), float(state["best_val_loss"])
        since_best, best_file = int(state["epochs_since_best"]), state["best_file"]
        best_state = load_file(str(resume_dir / best_file), device="cpu")
        train_seconds = float(state["seconds"])
        start_epoch = int(state["epoch"]) + 1
        log.info("resuming from %s after epoch %d/%d", resume_dir / "state.pt", start_epoch - 1, epochs)
    elif resume_dir.exists():
        shutil.rmtree(resume_dir)

    log.info(
        "training %s/%s (weights %s) on %s%s: %d train, %d val, %d test images at %d px; "
        "targets standardised (mean %.4g, sd %.4g); selection: %s",
        mcfg["arch"], mcfg["head"], mcfg["weights"], device, f" with {amp} autocast" if amp else "",
        len(train_ds), len(val_ds), len(parts["test"]), size, mu, sd, SELECTION,
    )
    stopped_early = since_best >= int(tcfg["patience"])
    epoch = start_epoch - 1
    for epoch in range(start_epoch, epochs + 1):
        if stopped_early:
            break
        t0 = time.perf_counter()
        train_loss, last_lr = _train_epoch(
            model, train_ds, optimizer, scheduler, scaler, epoch, seed, batch_size, device, amp
        )
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"training diverged in epoch {epoch} (train loss {train_loss}); lower train.lr (now {tcfg['lr']})"
            )
        z_val = _predict_dataset(model, val_ds, batch_size, device, amp)
        val_loss = float(np.mean((z_val - (y_val - mu) / sd) ** 2))
        val_pred = mu + sd * z_val
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_mae": mae(y_val, val_pred),
            "val_srcc": spearman(y_val, val_pred),
            "lr": last_lr,
            "seconds": seconds,
        }
        history.append(record)
        resume_dir.mkdir(parents=True, exist_ok=True)
        if val_loss < best_val_loss:
            best_epoch, best_val_loss, since_best = epoch, val_loss, 0
            best_state = _cpu_state(model)
            best_file = f"best-{epoch:04d}.safetensors"
            io.write_bytes(resume_dir / best_file, safetensors_bytes(best_state))
        else:
            since_best += 1
        stopped_early = since_best >= int(tcfg["patience"])
        _save_resume(
            resume_dir,
            {
                "format": RESUME_FORMAT,
                "config_hash": run_hash,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(),
                "history": history,
                "best_epoch": best_epoch,
                "best_val_loss": best_val_loss,
                "epochs_since_best": since_best,
                "best_file": best_file,
                "seconds": train_seconds,
            },
        )
        done = len(history)
        eta = train_seconds / done * (epochs - epoch)
        log.info(
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_mae %.4f  val_srcc %.4f  lr %.3g  %.1f s  ETA %s%s",
            epoch, epochs, train_loss, val_loss, record["val_mae"], record["val_srcc"], last_lr, seconds,
            _duration(eta), "  (best)" if best_epoch == epoch else "",
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    stopped_early = len(history) < epochs
    if stopped_early:
        log.info("early stopping after epoch %d: no lower val loss for %d epochs", history[-1]["epoch"], since_best)
    assert best_state is not None  # at least one epoch ran (epochs >= 1)
    log.info("best epoch %d (val loss %.4f)", best_epoch, best_val_loss)

    # The best weights, with the target standardisation folded into the output layer.
    model.load_state_dict(best_state)
    fold_affine(output_layer(model), scale=sd, shift=mu)
    model.eval()
    spec = {
        "arch": mcfg["arch"],
        "head": mcfg["head"],
        "weights": mcfg["weights"],
        "target_layer": target_layer,
        "input_size": size,
        "normalization": norm,
        "seed": seed,
        "data_hash": data_hash,
        "target_mean": mu,
        "target_std": sd,
        "best_epoch": best_epoch,
        "selection": SELECTION,
        "train": tcfg,
    }
    save_checkpoint(model, out_dir, spec)

    y_pred = predict(model, manifest["path"].tolist(), size, norm, batch_size, device)
    table = pa.table(
        {
            "image_id": pa.array(manifest["image_id"].astype(str).tolist(), pa.string()),
            "split": pa.array(manifest["split"].astype(str).tolist(), pa.string()),
            "y_true": pa.array(manifest["y_true"].to_numpy(np.float64), pa.float64(), mask=manifest["y_true"].isna().to_numpy()),
            "y_pred": pa.array(y_pred, pa.float64()),
        }
    )
    prov = provenance(
        {"model": mcfg, "train": tcfg, "seed": seed}, data_hash=data_hash, best_epoch=best_epoch, selection=SELECTION
    )
    io.write_table(out_dir / "predictions.parquet", table, PREDICTIONS_SCHEMA, metadata={"provenance": prov})

    hist = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    with io.atomic_path(out_dir / "history.csv") as tmp:
        hist.to_csv(tmp, index=False)
    plot_training_curve(hist, out_dir / "training_curve.png", best_epoch)

    n_boot = int(tcfg["bootstrap"])
    is_split = {s: (manifest["split"] == s).to_numpy() & manifest["y_true"].notna().to_numpy() for s in ("train", "val", "test")}
    y_all = manifest["y_true"].to_numpy(np.float64)
    metrics: dict[str, Any] = {
        "test": regression_report(y_all[is_split["test"]], y_pred[is_split["test"]], n_boot, seed),
        "val": regression_report(y_all[is_split["val"]], y_pred[is_split["val"]], n_boot, seed),
        # Train fit without intervals (large, and optimistic anyway).
        "train": regression_report(y_all[is_split["train"]], y_pred[is_split["train"]], 0, seed),
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "epochs_max": epochs,
        "stopped_early": stopped_early,
        "selection": SELECTION,
        "bootstrap": n_boot,
        "target_mean": mu,
        "target_std": sd,
        "n_images": {s: int((manifest["split"] == s).sum()) for s in SPLITS},
        "device": str(device),
        "amp": str(amp) if amp else "none",
        "seconds": time.perf_counter() - started,
        "train_seconds": train_seconds,
        "provenance": prov,
    }
    io.write_json(out_dir / "metrics.json", metrics)
    shutil.rmtree(resume_dir, ignore_errors=True)
    t = metrics["test"]
    log.info(
        "test (n=%d): MAE %s, RMSE %s, PLCC %s, SRCC %s, KRCC %s",
        t["n"], *(_fmt(t[k]["value"]) for k in ("mae", "rmse", "plcc", "srcc", "krcc")),
    )
    return metrics


def _train_epoch(
    model: nn.Module,
    ds: ImageDataset,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    epoch: int,
    seed: int,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None,
) -> tuple[float, float]:
    """One pass over ``ds``; returns (mean loss, learning rate of the last step).

    The order and the augmentations depend on (seed, epoch) only, so a resumed
    run repeats them exactly.
    """
    model.train()
    ds.set_epoch(epoch)
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, generator=gen, num_workers=0)
    total, count, lr = 0.0, 0, optimizer.param_groups[0]["lr"]
    for x, y, _ in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(x).reshape(-1)
        loss = F.mse_loss(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        total += float(loss.detach()) * len(x)
        count += len(x)
    return total / count, lr


def fold_affine(layer: nn.Linear, scale: float, shift: float) -> None:
    """Make ``layer`` output ``scale * old + shift`` (in place)."""
    with torch.no_grad():
        layer.weight.mul_(scale)
        layer.bias.mul_(scale).add_(shift)


def plot_training_curve(history: pd.DataFrame, path: str | os.PathLike, best_epoch: int) -> None:
    """Train/val loss and val SRCC per epoch, the best epoch marked; written atomically."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax_loss, ax_srcc = fig.subplots(1, 2)
    ax_loss.plot(history["epoch"], history["train_loss"], "o-", label="train")
    ax_loss.plot(history["epoch"], history["val_loss"], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="MSE (standardised scores)", title="Loss")
    ax_loss.legend()
    ax_srcc.plot(history["epoch"], history["val_srcc"], "o-", color="C2")
    ax_srcc.set(xlabel="epoch", ylabel="SRCC", title="Validation SRCC")
    for ax in (ax_loss, ax_srcc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.axvline(best_epoch, color="0.5", ls="--", lw=1, label="best epoch")
        ax.grid(alpha=0.3)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", metadata={"Software": None})


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
