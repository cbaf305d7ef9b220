"""Rule export_onnx: the trained model as ONNX (standard and int8), checked against PyTorch on the test split.

Writes, next to the checkpoint:

- ``results/model/model.onnx``: the model exported with a dynamic batch axis,
  its metadata saying how to feed it (:func:`ais.export_onnx.onnx_metadata`),
  checked with ``onnx.checker``;
- ``results/model/model.int8.onnx``: its dynamic int8 quantisation
  (:func:`ais.export_onnx.quantize_int8`);
- ``results/model/onnx.json``: the opset, each file's SHA-256 and size, the
  largest absolute difference between onnxruntime's (CPU) and PyTorch's (CPU)
  outputs on the test split's images (the job fails when it exceeds the
  tolerance), the int8 model's difference and the change of the task's test
  metrics it causes, and ``provenance``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ais import export_onnx as ex
from ais import io
from ais.data import read_manifest, select_split
from ais.models import load_trained
from ais.pipeline import iter_batches
from ais.provenance import file_hash
from ais.stages import job, stamp
from ais.tasks import Task
from ais.tasks.classification import task_from_spec

logger = logging.getLogger(__name__)


@dataclass
class _Outputs:
    """Raw outputs ``(N, K)`` of the three models on the split's images, and the images' targets."""

    torch: list[np.ndarray] = field(default_factory=list)
    onnx: list[np.ndarray] = field(default_factory=list)
    int8: list[np.ndarray] = field(default_factory=list)
    y_true: list[float] = field(default_factory=list)

    def stacked(self, name: str) -> np.ndarray:
        parts = getattr(self, name)
        return np.concatenate(parts) if parts else np.empty((0, 1), np.float32)


def run(
    model_dir: str | os.PathLike,
    manifest_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    summary_path: str | os.PathLike,
    int8_path: str | os.PathLike | None = None,
    split: str = "test",
    batch_size: int = 32,
    opset: int = ex.OPSET,
    tolerance: float = ex.PARITY_TOLERANCE,
    threads: int = 1,
    seed: int = 0,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export, check and (with ``int8_path``) quantise the model in ``model_dir``; return ``onnx.json``'s content.

    Parity is measured on the images of ``split`` (the manifest's; ``all``:
    every image) on the CPU with ``threads`` threads; a difference above
    ``tolerance`` (relative to max(1, max |output|)) is a ``ValueError``
    before any file is written.
    """
    started = time.perf_counter()
    model, spec = load_trained(model_dir, "cpu")
    task = task_from_spec(spec)  # a classifier with its classes
    rows = select_split(read_manifest(manifest_path), split)
    if rows.empty:
        raise ValueError(f"{manifest_path}: no {split} images to check the ONNX export on")
    size = int(spec["input_size"])
    meta = ex.onnx_metadata(spec, _class_names(spec, task))
    data = ex.export_onnx(model, size, meta, opset)
    int8 = ex.quantize_int8(data, meta) if int8_path is not None else None
    logger.info("exported %s (%d bytes, opset %d)%s in %.1f s", spec["arch"], len(data), opset,
                f"; int8 {len(int8)} bytes" if int8 else "", time.perf_counter() - started)
    outputs = _outputs(model, rows, spec, batch_size, data, int8, threads)
    parity = ex.check_parity(outputs.stacked("onnx"), outputs.stacked("torch"), tolerance)
    logger.info("parity on %d %s image(s): max |onnxruntime - PyTorch| = %.3g", parity["n"], split,
                parity["max_abs_difference"])
    io.write_bytes(onnx_path, data)
    summary = {
        "opset": opset, "split": split, "n_images": int(len(rows)), "parity": parity,
        "onnx": _file_facts(onnx_path), "input": {"name": ex.INPUT_NAME, "shape": ["batch", 3, size, size]},
        "output": {"name": ex.OUTPUT_NAME, "shape": ["batch", task.n_outputs]}, "metadata": meta,
        "pytorch_weights_sha256": spec.get("weights_sha256"),
    }
    if int8 is not None:
        io.write_bytes(int8_path, int8)
        summary["int8"] = {**_file_facts(int8_path), **_int8_figures(outputs, task, seed)}
    summary.update(seconds=time.perf_counter() - started, **stamp(config))
    io.write_json(summary_path, io.nan_to_none(summary))
    return summary


def _class_names(spec: Mapping[str, Any], task: Task) -> list[str]:
    """The class names of a classifier (``model.json``'s ``class_names``, else the task's); none for regression."""
    return [str(c) for c in (spec.get("class_names") or getattr(task, "class_names", None) or ())]


def _outputs(model: torch.nn.Module, rows: Any, spec: Mapping[str, Any], batch_size: int, data: bytes,
             int8: bytes | None, threads: int) -> _Outputs:
    """PyTorch, onnxruntime and (with ``int8``) int8 outputs on the rows' images, batch by batch."""
    sessions = {"onnx": ex.session(data, threads)}
    if int8 is not None:
        sessions["int8"] = ex.session(int8, threads)
    out = _Outputs()
    batches = iter_batches(rows, int(spec["input_size"]), spec["normalization"], batch_size, ("y_true",))
    for x, y_true in batches:
        xb = x.numpy()
        out.torch.append(ex.torch_outputs(model, xb, batch_size))
        for name, sess in sessions.items():
            getattr(out, name).append(ex.run_onnx(sess, xb, batch_size))
        out.y_true.extend(y_true)
    return out


def _int8_figures(outputs: _Outputs, task: Task, seed: int) -> dict[str, Any]:
    """The int8 model's largest difference from PyTorch and the change of the test metrics it causes."""
    reference, int8 = outputs.stacked("torch"), outputs.stacked("int8")
    y_true = np.asarray([np.nan if v is None else v for v in outputs.y_true], dtype=np.float64)

    def metrics(raw: np.ndarray) -> dict[str, Any]:
        y_pred = task.predictions(torch.from_numpy(raw)).double().numpy()
        return task.test_metrics(y_true, y_pred, 0, seed)

    changes = ex.metric_changes(metrics(reference), metrics(int8))
    logger.info("int8: max |int8 - PyTorch| = %.3g; metric changes %s", ex.max_abs_difference(int8, reference),
                {k: v["change"] for k, v in changes.items()})
    return {"max_abs_difference": ex.max_abs_difference(int8, reference),
            "n_labelled": int(np.isfinite(y_true).sum()), "metrics": changes}


def _file_facts(path: str | os.PathLike) -> dict[str, Any]:
    return {"file": Path(path).name, "sha256": file_hash(path), "bytes": os.path.getsize(path)}


def main(smk: Any) -> None:
    with job(smk):
        params, out = smk.params, smk.output
        export = params.export
        run(
            model_dir=Path(smk.input.spec).parent, manifest_path=smk.input.manifest, onnx_path=out.onnx,
            summary_path=out.summary, int8_path=out.int8, split=export["split"], batch_size=export["batch_size"],
            opset=export["opset"], tolerance=export["tolerance"], threads=smk.threads, seed=params.seed,
            config={"export": dict(export), "seed": params.seed},
        )
