"""Benchmark: onnxruntime (the exported file, standard and int8) against PyTorch on the CPU, latency per image.

A random ``--arch`` regressor (``--head``) at ``--size`` px is exported with
:func:`ais.export_onnx.export_onnx` and quantised with
:func:`ais.export_onnx.quantize_int8`; then, on the same random inputs and
with the same number of threads (``--threads``), each of PyTorch (eval,
``torch.inference_mode``), onnxruntime fp32 and onnxruntime int8 runs
``--images`` images one at a time (the mobile case) and in one batch
(``--batch``), after a warm-up; the median of ``--repeats`` runs is kept.
Also printed: the largest |onnxruntime - PyTorch| of the outputs (parity) and
the file sizes. The last line printed is one JSON object, with
``speedup_fp32`` / ``speedup_int8`` = PyTorch's time per image / onnxruntime's.

    .venv/bin/python benchmarks/onnx_latency.py --arch vgg11 --size 64 --images 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import numpy as np
import torch

from ais import export_onnx as ex
from ais.models import build_model


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _per_image(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int, repeats: int) -> dict[str, float]:
    """Seconds per image one at a time and in batches of ``batch``."""
    single = _median_seconds(lambda: [run(x[i:i + 1]) for i in range(len(x))], repeats) / len(x)
    batched = _median_seconds(lambda: [run(x[i:i + batch]) for i in range(0, len(x), batch)], repeats) / len(x)
    return {"batch1_s": single, f"batch{batch}_s": batched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg11")
    parser.add_argument("--head", default="gap")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.arch, args.head).eval()
    spec = {"arch": args.arch, "head": args.head, "input_size": args.size, "normalization": "imagenet"}
    start = time.perf_counter()
    data = ex.export_onnx(model, args.size, ex.onnx_metadata(spec))
    export_s = time.perf_counter() - start
    int8 = ex.quantize_int8(data)
    fp32_sess, int8_sess = ex.session(data, args.threads), ex.session(int8, args.threads)
    x = np.random.default_rng(0).standard_normal((args.images, 3, args.size, args.size)).astype(np.float32)

    def torch_run(xb: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(xb)).numpy()

    timings = {
        "pytorch": _per_image(torch_run, x, args.batch, args.repeats),
        "onnxruntime_fp32": _per_image(lambda xb: ex.run_onnx(fp32_sess, xb, args.batch), x, args.batch, args.repeats),
        "onnxruntime_int8": _per_image(lambda xb: ex.run_onnx(int8_sess, xb, args.batch), x, args.batch, args.repeats),
    }
    ref = ex.torch_outputs(model, x)
    result = {
        "arch": args.arch, "head": args.head, "size": args.size, "images": args.images, "threads": args.threads,
        "export_s": round(export_s, 2), "onnx_bytes": len(data), "int8_bytes": len(int8),
        "max_abs_difference_fp32": ex.max_abs_difference(ex.run_onnx(fp32_sess, x), ref),
        "max_abs_difference_int8": ex.max_abs_difference(ex.run_onnx(int8_sess, x), ref),
        **{f"{k}_{m}": round(v * 1e3, 3) for k, t in timings.items() for m, v in
           ((m.replace("_s", "_ms"), v) for m, v in t.items())},
    }
    for name in ("fp32", "int8"):
        t = timings[f"onnxruntime_{name}"]
        result[f"speedup_{name}"] = round(timings["pytorch"]["batch1_s"] / t["batch1_s"], 3)
        result[f"speedup_{name}_batch{args.batch}"] = round(
            timings["pytorch"][f"batch{args.batch}_s"] / t[f"batch{args.batch}_s"], 3)
    for k, t in timings.items():
        print(f"{k:18s} " + "  ".join(f"{m} {v * 1e3:8.2f} ms/image" for m, v in t.items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
