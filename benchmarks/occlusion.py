"""Benchmark occlusion sensitivity: all patch positions in batched passes against a one-patch-per-pass loop.

Measures, in one run on the same images and model (random weights, no
download; the demo's vgg11_bn with a GAP head at 64 px by default):

- ``batched_s``: :func:`ais.methods.occlusion.occlusion` with the method's
  ``auto`` copies per pass (median of ``--repeats``);
- ``loop_s``: the seed's loop, one forward pass per (image, patch position),
  each image occluded alone (median of ``--repeats``, interleaved);
- ``captum_s``: Captum's ``Occlusion`` with ``perturbations_per_eval=1``
  (one patch position per pass over the batch), when captum is installed.

It checks the three maps against each other and prints, as its last line,
one JSON object with ``speedup_vs_loop`` (``loop_s / batched_s``).

    .venv/bin/python benchmarks/occlusion.py --arch vgg11_bn --head gap --size 64 --images 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Callable

import torch
from _timing import timed  # benchmarks/_timing.py, beside this script

from ais.families import family_for
from ais.methods.occlusion import auto_batch, baseline, occlusion, window_masks


def loop(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, masks: torch.Tensor,
         fill: torch.Tensor) -> torch.Tensor:
    """The reference: one pass per image and patch position, ``(N, H, W)``."""
    out = torch.zeros(x.shape[0], *x.shape[-2:], dtype=torch.float64, device=x.device)
    for i in range(len(x)):
        xi, fi = x[i:i + 1], fill[i:i + 1]
        y0 = forward(xi)
        for m in masks:
            y = forward(xi * (1 - m) + fi * m)
            out[i] += (y0 - y).double()[0] * m.double()
    return (out / masks.sum(dim=0).double()).to(x.dtype)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="vgg11_bn")
    p.add_argument("--head", default="gap", choices=("classifier", "gap"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--fill", default="mean", choices=("zero", "mean", "blur"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = family_for(args.arch).build(args.arch, args.head, 1).to(device).eval()
    x = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
    masks = window_masks(args.size, args.size, args.window, args.stride, device)
    fill = baseline(x, args.fill)

    def forward(t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(t)[:, 0]

    per_pass = auto_batch(model, x)
    forward(x)  # warm-up
    batched, looped = [], []
    for _ in range(args.repeats):
        t, fast = timed(lambda: occlusion(forward, x, masks, fill, per_pass), device)
        batched.append(t)
        t, slow = timed(lambda: loop(forward, x, masks, fill), device)
        looped.append(t)
    result = {
        "arch": args.arch, "head": args.head, "size": args.size, "images": args.images, "window": args.window,
        "stride": args.stride, "positions": len(masks), "copies_per_pass": per_pass, "device": str(device),
        "threads": torch.get_num_threads(),
        "batched_s": statistics.median(batched), "loop_s": statistics.median(looped),
        "speedup_vs_loop": statistics.median(looped) / statistics.median(batched),
        "max_abs_diff_vs_loop": float((fast - slow).abs().max()),
        "map_max_abs": float(fast.abs().max()),
    }
    result.update(_captum(model, x, fill, args, device, fast, statistics.median(batched)))
    print(json.dumps(result))
    return result


def _captum(model: torch.nn.Module, x: torch.Tensor, fill: torch.Tensor, args: argparse.Namespace,
            device: torch.device, fast: torch.Tensor, batched_s: float) -> dict:
    try:
        from captum.attr import Occlusion
    except ImportError:
        return {"captum_s": None}
    t, ref = timed(lambda: Occlusion(model).attribute(
        x, sliding_window_shapes=(3, args.window, args.window), strides=(3, args.stride, args.stride),
        baselines=fill, target=0, perturbations_per_eval=1), device)
    return {"captum_s": t, "speedup_vs_captum": t / batched_s,
            "max_abs_diff_vs_captum": float((fast - ref[:, 0]).abs().max())}


if __name__ == "__main__":
    out = main()
    sys.exit(0 if out["max_abs_diff_vs_loop"] <= 1e-4 * max(out["map_max_abs"], 1e-12) + 1e-6 else 1)
