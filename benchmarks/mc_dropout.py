"""Benchmark Monte-Carlo dropout: 200 samples with the head-only resampling against one plain forward pass.

Measures, in one run on the same images and model (random weights, no
download; vgg16 with VGG's classifier head and its two Dropout(0.5) by
default, 224 px):

- ``forward_s``: one plain eval-mode forward pass of the batch (median of
  ``--repeats``, interleaved with the sampled runs so both see the same load);
- ``mc_s``: :func:`ais.uncertainty.mc_samples` with ``--samples`` samples
  (the layers before the first dropout run once, the rest on all samples);
- ``full_pass_s``: one complete stochastic forward pass of
  :func:`ais.uncertainty.mc_full_passes` (the reference), and
  ``full_passes_s_extrapolated`` = that x the number of samples.

It checks the samples against the reference's full passes (all of them, or
``--check`` evenly spaced ones on a slow machine; the masks are those of the
same ``--samples`` banks) and prints, as its last line, one JSON object with
``ratio_to_forward`` (``mc_s / forward_s``) and ``max_abs_diff_vs_full_passes``.

    .venv/bin/python benchmarks/mc_dropout.py --arch vgg16 --size 224 --images 4 --check 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import numpy as np
import torch
from _timing import timed  # benchmarks/_timing.py, beside this script

from ais.families import family_for
from ais.uncertainty import dropout_layers, mc_full_passes, mc_samples


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="vgg16")
    p.add_argument("--head", default="classifier", choices=("classifier", "gap"))
    p.add_argument("--head-dropout", type=float, default=None, help="model.head_dropout (gap needs one)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--check", type=int, default=0, help="full passes checked (0: all samples)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = family_for(args.arch).build(args.arch, args.head, 1, head_dropout=args.head_dropout).to(device).eval()
    x = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    forward()
    mc_samples(model, x, 2, 0)  # warm-up
    fwd, mc = [], []
    for _ in range(args.repeats):
        fwd.append(timed(forward, device)[0])
        t, samples = timed(lambda: mc_samples(model, x, args.samples, seed=0), device)
        mc.append(t)
    which = (list(range(args.samples)) if args.check <= 0 else
             sorted(set(np.linspace(0, args.samples - 1, args.check).round().astype(int).tolist())))
    full_t, full = timed(lambda: mc_full_passes(model, x, args.samples, seed=0, which=which), device)
    diff = float((samples[which] - full).abs().max())
    result = {
        "arch": args.arch, "head": args.head, "size": args.size, "images": args.images, "samples": args.samples,
        "device": str(device), "threads": torch.get_num_threads(), "dropout_layers": dropout_layers(model),
        "forward_s": statistics.median(fwd), "mc_s": statistics.median(mc),
        "full_pass_s": full_t / len(which), "full_passes_s_extrapolated": full_t / len(which) * args.samples,
        "checked_samples": len(which),
        "ratio_to_forward": statistics.median(mc) / statistics.median(fwd),
        "speedup_vs_full_passes": full_t / len(which) * args.samples / statistics.median(mc),
        "max_abs_diff_vs_full_passes": diff,
        "sample_std_mean": float(samples.std(dim=0).mean()),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["max_abs_diff_vs_full_passes"] <= 1e-5 else 1)
