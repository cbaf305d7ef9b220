"""ONNX export of a trained model, its parity with PyTorch under onnxruntime, and int8 quantisation.

:func:`export_onnx` turns the model (eval mode, CPU) into one ONNX file
with torch's exporter (``torch.onnx.export(dynamo=True)``), a dynamic batch
axis (input ``input`` ``(N, 3, S, S)`` float32, normalised as in training;
output ``output`` ``(N, K)``: the model's raw output, for the regression
task the predicted score), and metadata that says how to feed it
(:func:`onnx_metadata`: input size, normalisation with its mean and std, the
task, the class names, the output's meaning); the file is checked with
``onnx.checker`` (full check, shape inference included).

:func:`run_onnx` runs a file on arrays with onnxruntime on the CPU;
:func:`torch_outputs` runs the PyTorch model on the same arrays; their
largest absolute difference is the parity figure (:func:`max_abs_difference`).

:func:`quantize_int8` writes the dynamically quantised copy
(``onnxruntime.quantization.quantize_dynamic``: int8 weights of every Conv and
MatMul, activations quantised at run time from their observed range; no
calibration data), and :func:`metric_changes` says how much the task's test
metrics move with it.

Everything here works on a model, bytes and arrays; the rule's stage
(:mod:`ais.stages.export_onnx`) reads and writes the files.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ais.images import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

#: ONNX opset of the exported graph (onnxruntime >= 1.14 and its mobile builds run it).
OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"
#: Largest accepted |onnxruntime - PyTorch| of the raw outputs, relative to max(1, max |output|).
PARITY_TOLERANCE = 1e-4


def onnx_metadata(spec: Mapping[str, Any], class_names: Sequence[str] = ()) -> dict[str, str]:
    """The ``metadata_props`` of the exported file (strings; lists and mappings as JSON).

    From ``model.json``'s ``spec``: ``ais.input_size``, ``ais.normalization``
    (``imagenet`` or ``none``) with ``ais.mean`` / ``ais.std`` (JSON lists,
    applied to RGB values in [0, 1]; identity for ``none``), ``ais.task``,
    ``ais.class_names`` (JSON list; empty for regression), ``ais.output``
    (what a row of the output is), ``ais.arch``, ``ais.head``,
    ``ais.weights_sha256`` (the PyTorch weights it came from) and
    ``ais.input_layout``.
    """
    norm = str(spec.get("normalization", "imagenet"))
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if norm == "imagenet" else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    size = int(spec["input_size"])
    return {
        "ais.format": str(spec.get("format", "")),
        "ais.arch": str(spec["arch"]),
        "ais.head": str(spec["head"]),
        "ais.task": str(spec.get("task", "regression")),
        "ais.class_names": json.dumps(list(class_names)),
        "ais.output": str(spec.get("output", "score")),
        "ais.input_size": str(size),
        "ais.input_layout": f"{INPUT_NAME}: float32 (batch, 3, {size}, {size}), RGB, "
                            "resized to the square size (bilinear), (x / 255 - mean) / std",
        "ais.normalization": norm,
        "ais.mean": json.dumps(list(mean)),
        "ais.std": json.dumps(list(std)),
        "ais.weights_sha256": str(spec.get("weights_sha256", "")),
    }


def export_onnx(model: nn.Module, input_size: int, metadata: Mapping[str, str], opset: int = OPSET) -> bytes:
    """The ONNX file of ``model`` (input ``(N, 3, input_size, input_size)``, dynamic ``N``), checked.

    The model is exported on the CPU in eval mode (its device and training
    flags are restored afterwards). ``metadata`` becomes the file's
    ``metadata_props``. The bytes are checked with ``onnx.checker`` (full
    check) before they are returned; the same model gives the same bytes.
    """
    import onnx

    proto = _exported_proto(model, input_size, opset)
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        proto.metadata_props.add(key=str(key), value=str(value))
    proto.doc_string = "AIS model exported by ais.export_onnx"
    data = proto.SerializeToString(deterministic=True)
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    return data


def _exported_proto(model: nn.Module, input_size: int, opset: int):
    """``torch.onnx.export(dynamo=True)`` of a CPU copy of the model's state, as an ``onnx.ModelProto``."""
    device = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    example = torch.zeros(2, 3, input_size, input_size)
    try:
        model.to("cpu").eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own deprecation and tracing chatter
            program = torch.onnx.export(
                model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset, verbose=False,
                external_data=False,
            )
        return program.model_proto
    finally:
        model.to(device)
        for m, training in modes.items():
            m.train(training)


def read_metadata(data: bytes | str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (bytes or a path) as a dict."""
    import onnx

    proto = onnx.load_from_string(data) if isinstance(data, bytes) else onnx.load(os.fspath(data))
    return {p.key: p.value for p in proto.metadata_props}


def session(data: bytes | str | os.PathLike, threads: int = 0):
    """An onnxruntime CPU session of an ONNX file (``threads`` intra-op threads; 0: onnxruntime's choice)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3  # errors only
    source = data if isinstance(data, bytes) else os.fspath(data)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def run_onnx(sess: Any, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Outputs ``(N, K)`` float32 of an onnxruntime session on inputs ``x`` ``(N, 3, S, S)``, in batches."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    outs = [sess.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.empty((0, 0), np.float32)


def torch_outputs(model: nn.Module, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Outputs ``(N, K)`` float32 of the PyTorch model on inputs ``x`` ``(N, 3, S, S)``, on its device, eval mode."""
    device = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    outs = []
    try:
        model.eval()
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)).to(device)
                outs.append(model(xb).float().cpu().numpy())
    finally:
        for m, training in modes.items():
            m.train(training)
    return np.concatenate(outs) if outs else np.empty((0, 0), np.float32)


def max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b|`` over all entries (0 for empty arrays); shapes must agree."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"outputs differ in shape: {a.shape} and {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def check_parity(onnx_out: np.ndarray, torch_out: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> dict[str, Any]:
    """``{"max_abs_difference", "tolerance", "scale", "n"}``; ``ValueError`` when the difference is too large.

    Accepted when ``max |onnx - torch| <= tolerance * max(1, max |torch|)``.
    """
    diff = max_abs_difference(onnx_out, torch_out)
    scale = max(1.0, float(np.max(np.abs(torch_out))) if np.size(torch_out) else 1.0)
    if not diff <= tolerance * scale:
        raise ValueError(f"onnxruntime's outputs differ from PyTorch's by up to {diff:.3g} "
                         f"(tolerance {tolerance:g} x {scale:.3g}); the export is not faithful")
    return {"max_abs_difference": diff, "tolerance": tolerance, "scale": scale, "n": int(len(torch_out))}


def quantize_int8(data: bytes, metadata: Mapping[str, str] | None = None) -> bytes:
    """Dynamic int8 quantisation (onnxruntime) of an ONNX file's bytes; returns the quantised file's bytes.

    The graph is pre-processed first (``quant_pre_process``: shape inference,
    onnxruntime's graph optimisations); then the weights of Conv and MatMul
    nodes become int8 (per tensor), activations are quantised at run time. ``metadata`` (default: the input's)
    is written into the result, with ``ais.quantization`` added.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    meta = dict(metadata if metadata is not None else read_metadata(data))
    meta["ais.quantization"] = "dynamic int8 (onnxruntime.quantization.quantize_dynamic, QInt8 weights)"
    with tempfile.TemporaryDirectory(prefix="ais-int8-") as tmp:
        src, pre, dst = Path(tmp) / "model.onnx", Path(tmp) / "model.pre.onnx", Path(tmp) / "model.int8.onnx"
        src.write_bytes(data)
        quant_pre_process(src, pre)  # shape inference and graph optimisation (BatchNorm folded into Conv)
        quantize_dynamic(pre, dst, weight_type=QuantType.QInt8)
        proto = onnx.load(os.fspath(dst))
    del proto.metadata_props[:]
    for key, value in sorted(meta.items()):
        proto.metadata_props.add(key=key, value=value)
    out = proto.SerializeToString(deterministic=True)
    onnx.checker.check_model(onnx.load_from_string(out), full_check=True)
    return out


def metric_changes(reference: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """Per metric of two test-metric reports (:meth:`ais.tasks.Task.test_metrics`): both values and the change.

    Returns ``{metric: {"reference", "quantized", "change"}}`` for every
    metric with a ``value`` in both (``change`` None where either is None).
    """
    out: dict[str, Any] = {}
    for name, ref in reference.items():
        if not (isinstance(ref, Mapping) and "value" in ref and isinstance(other.get(name), Mapping)):
            continue
        a, b = ref["value"], other[name]["value"]
        out[name] = {"reference": a, "quantized": b, "change": None if a is None or b is None else b - a}
    return out
