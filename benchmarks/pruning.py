"""Benchmark the pruning test's unit masks: the cut after the layer against a full forward pass per mask.

Measures, in one run on the same images, model (random weights, no download;
the demo's vgg11_bn with a GAP head at 64 px by default) and masks:

- ``suffix_s``: :class:`ais.validity.pruning.MaskedRunner` on the cut after the
  layer (the layer's output computed once, then only the rest of the network per
  mask), including that first pass;
- ``forward_s``: :func:`ais.validity.pruning.masked_predictions`, one full forward
  pass with a masking hook per mask (the reference, and the path of models
  without a cut).

It checks that both give the same predictions and prints, as its last line, one
JSON object with ``speedup_vs_forward`` (``forward_s / suffix_s``).

    .venv/bin/python benchmarks/pruning.py --arch vgg11_bn --size 64 --images 90 --masks 10
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from _timing import timed  # benchmarks/_timing.py, beside this script

from ais.families import family_for
from ais.validity import pruning


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg11_bn")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=90)
    parser.add_argument("--masks", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    torch.manual_seed(0)
    family = family_for(args.arch)
    model = family.build(args.arch, "gap", 1).eval()
    layer = family.resolve_layer(model, "auto")
    n_units = family.n_units(model, layer)
    x = torch.rand(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    rng = np.random.default_rng(0)
    masks = [pruning.unit_mask(n_units, rng.choice(n_units, size=int(k), replace=False))
             for k in np.geomspace(1, n_units, args.masks).round()]
    predict = lambda out: out.reshape(-1)  # noqa: E731

    def suffix_run() -> tuple[str, list[np.ndarray]]:
        runner = pruning.MaskedRunner(model, layer, x, predict, args.batch)
        return runner.path, [runner(m) for m in masks]

    suffix_s, (path, fast) = timed(suffix_run, device)
    forward_s, slow = timed(lambda: [pruning.masked_predictions(model, layer, x, m, predict, args.batch)
                                     for m in masks], device)
    err = float(max(np.abs(a - b).max() for a, b in zip(fast, slow)))
    result = {
        "benchmark": "pruning_masks", "arch": args.arch, "layer": layer, "units": n_units, "size": args.size,
        "images": args.images, "masks": args.masks, "path": path, "threads": torch.get_num_threads(),
        "suffix_s": round(suffix_s, 3), "forward_s": round(forward_s, 3),
        "speedup_vs_forward": round(forward_s / suffix_s, 1), "max_abs_err": err,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
