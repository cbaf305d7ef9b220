"""Benchmark RISE deletion / insertion: every perturbed image in batched passes against a per-step loop.

Measures, in one run on the same images, maps and model (random weights, no
download; the demo's vgg11_bn with a GAP head at 64 px by default):

- ``batched_s``: :func:`ais.validity.faithfulness.perturbation_curves`, all
  (image, order, step, curve) points in batches of ``--batch`` (median of ``--repeats``);
- ``loop_s``: the obvious loop, one forward pass per perturbed image, the
  pixels sorted again for every step (median of ``--repeats``, interleaved).

It checks that both give the same curves and prints, as its last line, one
JSON object with ``speedup_vs_loop`` (``loop_s / batched_s``).

    .venv/bin/python benchmarks/validity.py --arch vgg11_bn --size 64 --images 2 --orders 4 --steps 8
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch
from _timing import timed  # benchmarks/_timing.py, beside this script

from ais.families import family_for
from ais.validity import faithfulness as fa


def loop(model: torch.nn.Module, x: torch.Tensor, scores: torch.Tensor, steps: int, sub_del: torch.Tensor,
         sub_ins: torch.Tensor) -> np.ndarray:
    """The reference: for each image, order and step, sort, build one perturbed image, one forward pass."""
    n, o = scores.shape[:2]
    pixels = x.shape[-1] * x.shape[-2]
    out = np.empty((2, n, o, steps + 1))
    with torch.no_grad():
        for i in range(n):
            for j in range(o):
                for s in range(steps + 1):
                    before, count = fa.tie_groups(scores[i, j].reshape(1, -1))
                    w = fa.removal_weights(before, count, torch.tensor([s * pixels / steps])).view(x.shape[-2:])
                    out[0, i, j, s] = float(model((x[i] + w * (sub_del[i] - x[i]))[None])[0, 0])
                    out[1, i, j, s] = float(model((sub_ins[i] + w * (x[i] - sub_ins[i]))[None])[0, 0])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vgg11_bn")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--orders", type=int, default=4)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = family_for(args.arch).build(args.arch, "gap").eval().to(device)
    x = torch.randn(args.images, 3, args.size, args.size, device=device)
    scores = torch.rand(args.images, args.orders, args.size, args.size, device=device)
    sub_del, sub_ins = fa.make_substrate(x, "mean", 0.0625), fa.make_substrate(x, "blur", 0.0625)
    target = lambda out: out[:, 0]  # noqa: E731
    batched, looped = [], []
    for _ in range(args.repeats):
        t, curves = timed(lambda: fa.perturbation_curves(model, target, x, scores, args.steps, sub_del, sub_ins,
                                                         args.batch), device)
        batched.append(t)
        t, ref = timed(lambda: loop(model, x, scores, args.steps, sub_del, sub_ins), device)
        looped.append(t)
    err = max(float(np.abs(curves.deletion - ref[0]).max()), float(np.abs(curves.insertion - ref[1]).max()))
    b, lo = statistics.median(batched), statistics.median(looped)
    print(f"batched {b:.3f} s, loop {lo:.3f} s, max |difference| {err:.2e}")
    print(json.dumps({"benchmark": "validity_faithfulness", "arch": args.arch, "size": args.size,
                      "images": args.images, "orders": args.orders, "steps": args.steps, "device": device.type,
                      "perturbed_images": 2 * args.images * args.orders * (args.steps + 1),
                      "batched_s": round(b, 4), "loop_s": round(lo, 4), "max_abs_difference": err,
                      "speedup_vs_loop": round(lo / b, 2)}))


if __name__ == "__main__":
    main()
