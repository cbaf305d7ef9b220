"""The ready GPU check: every CUDA path of AIS once, with figures, in one run (``benchmarks/gpu_check.sh``).

On the device (default ``cuda``; ``--cpu`` runs the same checks on the CPU
at small sizes, as the test suite does):

1. the ablation engine on the device against the CPU result (max |diff|);
2. engine throughput (images/s) for ``--arch`` at ``--size`` px, batch 32 and
   64, in float32, with TF32 matmuls and with bf16 autocast, and the error
   each causes against float32;
3. maps (every registered method) on the device against the CPU;
4. a one-epoch fine-tune with AMP (bf16/fp16 autocast on CUDA) on a tiny
   demo data set, through the training stage;
5. the tiny workflow end to end with ``--resources gpu=1`` (with ``--cpu``: up to
   its ablation shard, which runs every GPU rule that the shard needs);
6. decoding throughput of the image pipeline with 0 and with N workers.

Prints one JSON line last. ``benchmarks/gpu_check.sh --cpu`` is part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent


def engine_outputs(model, layer: str, x: torch.Tensor, device: torch.device, dtype=None) -> torch.Tensor:
    from ais.ablation import ChannelAblation

    with ChannelAblation(model.to(device), layer, device=device) as engine, \
            torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return engine(x.to(device))[1]


def throughput(model, layer: str, size: int, batch: int, device: torch.device, mode: str) -> tuple[float, float]:
    """Images per second of the engine and its max |error| against float32 on the same device."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    reference = engine_outputs(model, layer, x, device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = mode == "tf32"
    dtype = torch.bfloat16 if mode == "bf16" else None
    engine_outputs(model, layer, x, device, dtype)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = engine_outputs(model, layer, x, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return batch / seconds, float((out.float() - reference).abs().max())


def maps_difference(model, layer: str, size: int, device: torch.device) -> float:
    from ais.methods import compute_maps

    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))
    c = model.get_submodule(layer).out_channels
    inputs = {"ais_weights": np.linspace(-1, 1, 2 * c).reshape(2, c), "direction_weights": np.ones((2, c))}
    cpu = compute_maps(model.cpu(), layer, x, inputs)
    dev = compute_maps(model.to(device), layer, x.to(device), inputs)
    model.cpu()
    return max(float(np.abs(cpu[k] - dev[k]).max()) for k in cpu)


def tiny_config(work: Path, cpu: bool) -> Path:
    import yaml

    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())
    cfg["train"]["epochs"] = 1
    if cpu:
        cfg["demo"]["n_images"] = 12
        cfg["ablation"]["shards"] = 1
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def workflow(work: Path, cpu: bool) -> dict[str, object]:
    """The tiny workflow with --resources gpu=1 (the GPU rules take the slot); with ``cpu`` up to ablation."""
    work.mkdir(parents=True, exist_ok=True)
    config = tiny_config(work, cpu)
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    targets = ["results/ablation/shard-0.parquet"] if cpu else []
    start = time.perf_counter()
    proc = subprocess.run([snakemake, *targets, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
                           "--configfile", str(config), "--cores", "2", "--resources", "gpu=1"],
                          capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"tiny workflow failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    metrics = json.loads((work / "results" / "model" / "metrics.json").read_text())
    return {"workflow_s": seconds, "workflow_train_device": metrics["device"], "workflow_amp": metrics["amp"],
            "workflow_test_srcc": metrics["test"]["srcc"]["value"]}


def finetune(work: Path, device: torch.device) -> dict[str, object]:
    """One epoch through the training stage on the tiny run's manifest (AMP on CUDA)."""
    from ais.config import load_config
    from ais.stages import finetune_model

    cfg = load_config(work / "config.yaml")
    start = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(work)  # the manifest's image paths are relative to the run's folder
    try:
        metrics = finetune_model.run("results/data/manifest.parquet", work / "finetune", cfg["model"],
                                     {**cfg["train"], "epochs": 1}, cfg["seed"], device=device)
    finally:
        os.chdir(cwd)
    return {"finetune_s": time.perf_counter() - start, "finetune_amp": metrics["amp"],
            "finetune_device": metrics["device"]}


def decoding(work: Path, workers: int) -> dict[str, float]:
    from stages import write_photos  # benchmarks/stages.py, beside this file

    from ais.pipeline import iter_batches

    folder = work / "photos"
    folder.mkdir()
    rows = pd.DataFrame({"path": write_photos(folder, 16, 1024, 768)})
    out = {}
    for n in (0, workers):
        start = time.perf_counter()
        for _ in iter_batches(rows, 224, "imagenet", 4, workers=n):
            pass
        out[f"decode_images_per_s_workers_{n}"] = len(rows) / (time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the checks on the CPU at small sizes (tests)")
    parser.add_argument("--arch", default=None, help="default: vgg16 (vgg11 with --cpu)")
    parser.add_argument("--size", type=int, default=None, help="default: 224 (32 with --cpu)")
    parser.add_argument("--workers", type=int, default=None, help="decoding workers (default: CPUs - 1, at most 8)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ais.families import family_for
    from ais.models import build_model

    device = torch.device("cpu" if args.cpu else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run with --cpu to check the CPU paths")
    arch, size = args.arch or ("vgg11" if args.cpu else "vgg16"), args.size or (32 if args.cpu else 224)
    batches = (4, 8) if args.cpu else (32, 64)
    workers = args.workers if args.workers is not None else max(1, min(8, (os.cpu_count() or 2) - 1))
    torch.manual_seed(0)
    model = build_model(arch, "classifier" if not args.cpu else "gap").eval()
    layer = family_for(arch).resolve_layer(model, "auto")
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    cpu_ref = engine_outputs(model, layer, x, torch.device("cpu"))
    result: dict[str, object] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "arch": arch, "size": size,
        "layer": layer, "torch": torch.__version__,
        "engine_max_abs_diff_vs_cpu": float((engine_outputs(model, layer, x, device) - cpu_ref).abs().max()),
    }
    for batch in batches:
        for mode in ("fp32", "tf32", "bf16"):
            rate, err = throughput(model, layer, size, batch, device, mode)
            result[f"engine_images_per_s_b{batch}_{mode}"] = rate
            result[f"engine_max_abs_err_b{batch}_{mode}"] = err
    result["maps_max_abs_diff_vs_cpu"] = maps_difference(model, layer, size, device)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result.update(workflow(work / "tiny", args.cpu))
        result.update(finetune(work / "tiny", device))
        result.update(decoding(work, workers))
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()}))
    return result


if __name__ == "__main__":
    main()
