"""Rule finetune_model: fine-tune the model on the manifest; write checkpoint, history, predictions, metrics.

:func:`run` reads the manifest, builds ``model.arch`` through its family
(after seeding), checks ``model.target_layer`` before training, trains with
:func:`ais.training.train` (resumable: the resume state lives in
``out_dir/resume`` until success) and writes, in ``out_dir``:

- ``model.safetensors`` and ``model.json`` (:func:`ais.models.save_checkpoint`;
  the spec names the task and its target encoding; for classification its
  ``classes``, ``explained_class``, ``explained_index`` and ``class_weights``,
  from which every later stage rebuilds the task: :func:`ais.tasks.classification.task_from_spec`),
- ``predictions.parquet`` (:func:`ais.tables.predictions_schema`, every
  manifest row, with its ``group``; classification: ``y_pred`` the explained
  class's probability, ``pred_class`` and ``prob_0..prob_{K-1}``; metadata: the provenance stamp with ``data_hash``,
  ``best_epoch`` and ``selection``, and ``uncertainty``: whether and how
  Monte-Carlo dropout sampled, or why not); with ``uncertainty.mc_samples`` > 0
  and dropout in the head, the Monte-Carlo dropout columns
  (:func:`ais.uncertainty.mc_predict`; null otherwise),
- ``history.csv`` (one row per epoch) and ``training_curve.png``,
- ``metrics.json``: the task's test metrics of the test, val and train
  splits, the run's facts and timings, and ``provenance``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import nn

from ais import io, uncertainty
from ais.config import config_section
from ais.data import read_manifest
from ais.errors import UserError
from ais.families import Family, family_for
from ais.models import build_model, configure_determinism, save_checkpoint, set_head_dropout, set_seed
from ais.pipeline import loader_workers
from ais.stages import job, pick_device, stamp
from ais.tables import SPLITS, predictions_schema
from ais.tasks import Task, get_task
from ais.tasks.classification import resolve_class_weights
from ais.training import (
    EpochCallback,
    TrainResult,
    check_splits,
    predict,
    split_metrics,
    train,
    training_curve,
)

logger = logging.getLogger(__name__)


def run(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_cfg: Mapping[str, Any],
    train_cfg: Mapping[str, Any],
    seed: int,
    device: str | torch.device | None = None,
    resume_dir: str | os.PathLike | None = None,
    on_epoch_end: EpochCallback | None = None,
    uncertainty_cfg: Mapping[str, Any] | None = None,
    workers: int = 0,
    explained_class: str | None = None,
) -> dict[str, Any]:
    """Train on the manifest at ``manifest_path``; write the outputs to ``out_dir``; return ``metrics.json``'s content.

    ``model_cfg`` and ``train_cfg`` are the config's ``model`` and ``train``
    sections (missing keys take the schema's defaults, except a missing
    ``target_layer``, which becomes ``auto``: it only decides what
    ``model.json`` records). ``device`` defaults to CUDA when available.
    ``resume_dir`` (default ``out_dir/resume``) holds the resume state;
    ``workers`` decoding processes feed the GPU (on the CPU the images are
    decoded once in this process and kept for the later epochs, and the
    cores compute). ``on_epoch_end(epoch, record)`` is called after each epoch's resume
    state is on disk. ``uncertainty_cfg``: the config's ``uncertainty``
    section (default: the schema's, 200 samples where the head has dropout).
    Classification: the classes are the manifest's (metadata ``classes``, written by
    intake), ``explained_class`` (``explain.class``) the explained one (default: the last).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    resume_dir = Path(resume_dir) if resume_dir is not None else out_dir / "resume"
    mcfg, tcfg = _sections(model_cfg, train_cfg)
    manifest = read_manifest(manifest_path)
    check_splits(manifest, str(manifest_path))  # before building anything
    device = pick_device(device)
    task, family = _task(mcfg, tcfg, manifest, manifest_path, explained_class), family_for(mcfg["arch"])
    model, target_layer = _build(mcfg, task, family, seed)  # the layer is checked before training, not after
    result = train(manifest, task, family, model, mcfg, tcfg, seed, device, resume_dir, on_epoch_end,
                   workers=workers if device.type == "cuda" else 0)
    provenance = stamp({"model": mcfg, "train": tcfg, "seed": seed}, data_hash=result.data_hash,
                       best_epoch=result.best_epoch, selection=task.selection)
    _write_checkpoint(result, out_dir, mcfg, tcfg, seed, task, target_layer)
    y_pred = predict(result.model, manifest["path"].tolist(), int(mcfg["input_size"]), mcfg["normalization"],
                     int(tcfg["batch_size"]), device, task)
    mc, mc_info = _mc_dropout(result.model, manifest, mcfg, tcfg, config_section("uncertainty", uncertainty_cfg or {}),
                              seed, task)
    _write_predictions(out_dir / "predictions.parquet", manifest, y_pred, {**provenance, "uncertainty": mc_info}, mc,
                       task)
    _write_history(out_dir, result, task)
    metrics = {
        **split_metrics(manifest, y_pred, task, int(tcfg["bootstrap"]), seed),
        **_facts(result, task, tcfg, manifest, device),
        "uncertainty": _uncertainty_figures(mc_info, manifest, y_pred, mc),
        "seconds": time.perf_counter() - started,
        "train_seconds": result.seconds,
        **provenance,
    }
    io.write_json(out_dir / "metrics.json", metrics)
    shutil.rmtree(resume_dir, ignore_errors=True)
    _log_test(metrics["test"])
    return metrics


def _task(mcfg: Mapping[str, Any], tcfg: Mapping[str, Any], manifest: pd.DataFrame,
          manifest_path: str | os.PathLike, explained_class: str | None) -> Task:
    """``model.task``; a classifier configured with the manifest's classes, the explained class and class weights."""
    task = get_task(mcfg["task"])
    if not hasattr(task, "configure"):
        return task
    classes = io.read_metadata(manifest_path).get("classes")
    if not classes:
        raise UserError(f"{manifest_path}: the manifest names no classes (metadata 'classes'); model.task "
                        "classification needs a manifest written by intake with data.label_column and data.classes")
    train_y = manifest.loc[(manifest["split"] == "train") & manifest["y_true"].notna(), "y_true"].to_numpy(np.int64)
    weights = resolve_class_weights(tcfg.get("class_weights"), train_y, len(classes))
    task = task.configure(classes, explained_class, weights)
    logger.info("classification: classes %s, explained %r, class weights %s", list(classes), task.explained, weights)
    return task


def _sections(model_cfg: Mapping[str, Any], train_cfg: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``model`` and ``train`` sections with defaults; a missing target layer is ``auto``."""
    mcfg, tcfg = config_section("model", model_cfg), config_section("train", train_cfg)
    if "target_layer" not in model_cfg:  # not a training setting; the stored default is the family's last layer
        mcfg["target_layer"] = "auto"
    return mcfg, tcfg


def _build(mcfg: Mapping[str, Any], task: Task, family: Family, seed: int) -> tuple[nn.Module, str]:
    """The seeded, freshly built model (CPU) and its resolved target layer."""
    configure_determinism()
    set_seed(seed)
    model = build_model(mcfg["arch"], mcfg["head"], mcfg["weights"], progress=False, n_outputs=task.n_outputs,
                        mlp=mcfg.get("mlp"))
    if mcfg.get("head_dropout") is not None:  # no parameters: the weights and the RNG stream are unchanged
        set_head_dropout(family, model, float(mcfg["head_dropout"]))
    return model, family.resolve_layer(model, mcfg["target_layer"])


def _mc_dropout(model: nn.Module, manifest: pd.DataFrame, mcfg: Mapping[str, Any], tcfg: Mapping[str, Any],
                ucfg: Mapping[str, Any], seed: int, task: Task) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Monte-Carlo dropout columns of every manifest row (empty where not sampled) and what was done."""
    info = uncertainty.status(model, int(ucfg["mc_samples"]))
    if info["status"] != "sampled":
        logger.info("Monte-Carlo dropout: not sampled (%s)", info["reason"])
        return {}, info
    if task.name != "regression":
        return {}, {**info, "status": "unsupported", "mc_samples": 0,
                    "reason": f"Monte-Carlo dropout summaries are implemented for regression, not {task.name}"}
    started = time.perf_counter()
    samples = uncertainty.mc_predict(model, manifest["path"].tolist(), int(mcfg["input_size"]), mcfg["normalization"],
                                     int(tcfg["batch_size"]), int(info["mc_samples"]), seed, task.predictions)
    info = {**info, "seed": seed, "batch_size": int(tcfg["batch_size"]), "seconds": time.perf_counter() - started,
            "method": "layers before the first dropout run once; the rest on all samples (ais.uncertainty)"}
    logger.info("Monte-Carlo dropout: %d samples of %d image(s) in %.1f s", info["mc_samples"], len(manifest),
                info["seconds"])
    return uncertainty.summarize(samples, "regression"), info


def _uncertainty_figures(info: Mapping[str, Any], manifest: pd.DataFrame, y_pred: np.ndarray,
                         mc: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``metrics.json``'s ``uncertainty``: what was done and, on the labelled test rows, SRCC(std, |error|)."""
    out: dict[str, Any] = {k: v for k, v in info.items() if k != "seconds"}
    if "mc_std" in mc:
        test = ((manifest["split"] == "test") & manifest["y_true"].notna()).to_numpy()
        error = np.abs(y_pred - manifest["y_true"].to_numpy(np.float64))
        out["test_n"] = int(test.sum())
        out["test_mean_std"] = float(np.mean(mc["mc_std"][test])) if test.any() else None
        out["test_srcc_std_abs_error"] = uncertainty.spearman(mc["mc_std"][test], error[test])
    return out


def _write_checkpoint(
    result: TrainResult, out_dir: Path, mcfg: Mapping[str, Any], tcfg: Mapping[str, Any], seed: int, task: Task,
    target_layer: str,
) -> None:
    spec = {
        "arch": mcfg["arch"],
        "head": mcfg["head"],
        "head_dropout": mcfg.get("head_dropout"),
        "task": task.name,
        "weights": mcfg["weights"],
        "target_layer": target_layer,
        "input_size": int(mcfg["input_size"]),
        "normalization": mcfg["normalization"],
        "seed": seed,
        "data_hash": result.data_hash,
        **result.encoding,
        **(task.settings() if hasattr(task, "settings") else {}),
        "best_epoch": result.best_epoch,
        "selection": task.selection,
        "train": dict(tcfg),
    }
    save_checkpoint(result.model, out_dir, spec)


def _write_predictions(path: Path, manifest: pd.DataFrame, y_pred: np.ndarray, metadata: Mapping[str, Any],
                       mc: Mapping[str, np.ndarray] | None = None, task: Task | None = None) -> None:
    """``predictions.parquet``; the Monte-Carlo columns absent from ``mc`` are null.

    ``y_pred``: the task's predictions, ``(N,)`` scores or ``(N, K)`` class probabilities (then ``y_pred`` is
    the explained class's, beside ``pred_class`` and ``prob_k``).
    """
    mc = mc or {}
    n = len(manifest)
    probs = np.asarray(y_pred, dtype=np.float64)
    k = probs.shape[1] if probs.ndim == 2 else 0
    group = manifest["group"] if "group" in manifest else pd.Series([None] * n)
    columns = {
        "image_id": pa.array(manifest["image_id"].astype(str).tolist(), pa.string()),
        "split": pa.array(manifest["split"].astype(str).tolist(), pa.string()),
        "y_true": pa.array(manifest["y_true"].to_numpy(np.float64), pa.float64(),
                           mask=manifest["y_true"].isna().to_numpy()),
        "y_pred": pa.array(probs[:, task.explained_index] if k else probs, pa.float64()),
        **{name: pa.array(mc[name], pa.float64()) if name in mc else pa.nulls(n, pa.float64())
           for name in ("mc_mean", "mc_std", "mc_entropy", "mc_mutual_information")},
        "group": pa.array([None if pd.isna(g) else str(g) for g in group], pa.string()),
    }
    if k:
        columns["pred_class"] = pa.array(probs.argmax(axis=1).astype(np.int32), pa.int32())
        columns.update({f"prob_{j}": pa.array(probs[:, j], pa.float64()) for j in range(k)})
    io.write_table(path, pa.table(columns), predictions_schema(k), metadata=metadata)


def _write_history(out_dir: Path, result: TrainResult, task: Task) -> None:
    """``history.csv`` and ``training_curve.png``, each atomically."""
    with io.atomic_path(out_dir / "history.csv") as tmp:
        result.history.to_csv(tmp, index=False)
    fig = training_curve(result.history, result.best_epoch, task)
    with io.atomic_path(out_dir / "training_curve.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png", metadata={"Software": None})


def _facts(
    result: TrainResult, task: Task, tcfg: Mapping[str, Any], manifest: pd.DataFrame, device: torch.device
) -> dict[str, Any]:
    """What ``metrics.json`` says about the run besides the metrics."""
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "epochs_max": result.epochs_max,
        "stopped_early": result.stopped_early,
        "selection": task.selection,
        "bootstrap": int(tcfg["bootstrap"]),
        **result.encoding,
        **(task.settings() if hasattr(task, "settings") else {}),
        "n_images": {s: int((manifest["split"] == s).sum()) for s in SPLITS},
        "device": str(device),
        "amp": str(result.amp) if result.amp else "none",
    }


def _log_test(test: Mapping[str, Any]) -> None:
    values = ", ".join(f"{k.upper()} {_fmt(v['value'])}" for k, v in test.items()
                       if isinstance(v, Mapping) and "value" in v)
    logger.info("test (n=%s): %s", test.get("n", "?"), values)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def main(smk: Any) -> None:
    with job(smk, gpu=True):
        params = smk.params
        run(smk.input.manifest, Path(smk.output.spec).parent, params.model, params.train, params.seed,
            uncertainty_cfg=params.uncertainty, workers=loader_workers(smk.threads),
            explained_class=(getattr(params, "explain", None) or {}).get("class"))
