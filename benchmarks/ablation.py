"""Benchmark the channel-ablation engine against the naive loop and Captum.

The model is any registered architecture (``ais.families.list_archs()``),
built by :func:`ais.models.build_model` (its family's head, random weights,
no download); the layer defaults to the family's default explainable layer
(``auto``). Measures, in one run on the same images and model:

- ``forward_s``: one plain forward pass of the images (median of repeats);
- ``engine_s``: :class:`ais.ablation.ChannelAblation` over all channels
  (median of repeats, interleaved with the forward passes so that both see
  the same machine load; ``ratio_engine_to_forward_min`` compares the best
  repeats, the steadier figure on a busy machine);
- ``naive_s``: :func:`ais.ablation.naive_ablation` (zero ``weight[c]``, full
  forward, restore) on a sample of channels, extrapolated to all:
  ``t * C / (k + 1)`` (``k + 1`` forward passes of equal cost);
- ``captum_s``: Captum's ``LayerFeatureAblation`` with
  ``perturbations_per_eval=32`` on a sample of channels (the other channels
  form one more group), extrapolated to all:
  ``forward + (t - forward) * C / (k + 1)``.

It checks the engine against the naive loop on the sampled channels and
prints, as its last line, one JSON object (with the path the engine took,
``why_not_faster`` when it is not ``lowrank``, and the number of units).

    .venv/bin/python benchmarks/ablation.py --arch vgg16 --size 224 --images 1
    .venv/bin/python benchmarks/ablation.py --arch resnet50 --layer layer4.2
    .venv/bin/python benchmarks/ablation.py --arch vit_b_16   # the last block's 3072 MLP neurons
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import numpy as np
import torch
from _timing import timed  # benchmarks/_timing.py, beside this script
from torch import nn

from ais.ablation import ChannelAblation, naive_ablation
from ais.families import family_for, list_archs
from ais.models import build_model
from ais.targets import RegressionTarget


def sample_channels(n_channels: int, k: int) -> list[int]:
    """``k`` channels spread evenly over ``0..n_channels-1`` (first and last included)."""
    k = max(1, min(k, n_channels))
    return sorted({int(round(v)) for v in np.linspace(0, n_channels - 1, k)})


def captum_time(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, channels: list[int], n_channels: int, device: torch.device
) -> tuple[float, torch.Tensor]:
    """Captum's LayerFeatureAblation on ``channels`` (the rest: one more group).

    Returns its seconds and its attributions ``y - y_ablated`` ``(N, k)``.
    """
    from captum.attr import LayerFeatureAblation

    target = RegressionTarget()
    shapes = []  # the layer output's rank: (N, C, H, W); a ViT's neurons (N, C, T), heads (N, H, T, d)
    handle = layer.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    with torch.no_grad():
        model(x)
    handle.remove()
    mask = torch.full((1, n_channels, *([1] * (len(shapes[0]) - 2))), len(channels), dtype=torch.long, device=device)
    for group, c in enumerate(channels):
        mask[0, c] = group
    ablator = LayerFeatureAblation(lambda inp: target(model(inp)), layer)
    with torch.no_grad():
        seconds, attr = timed(
            lambda: ablator.attribute(x, layer_mask=mask, perturbations_per_eval=32), device
        )
    return seconds, attr.flatten(2)[:, channels, 0].float().cpu()


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg16", choices=list_archs())
    parser.add_argument("--head", default=None, help="the family's head (default: its first; VGG: classifier)")
    parser.add_argument("--layer", default="auto",
                        help="explainable layer (module name) or auto (the family's default)")
    parser.add_argument("--size", type=int, default=224, help="input size in pixels")
    parser.add_argument("--images", type=int, default=1, help="images per batch")
    parser.add_argument("--channels-sample", type=int, default=8, help="channels timed with the naive loop")
    parser.add_argument("--captum-sample", type=int, default=31, help="channels timed with Captum (0: skip)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of forward and engine (median)")
    parser.add_argument("--channel-batch", default="auto", help="engine channel_batch (int or auto)")
    parser.add_argument("--path", default="auto", choices=("auto", "lowrank", "tail", "residual", "generic"))
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    family = family_for(args.arch)
    args.head = args.head or family.heads[0]
    model = build_model(args.arch, args.head).eval().to(device)
    head = family.output_layer(model)
    if not head.weight.any():  # torchvision's ViT head starts at zero: every delta would be 0
        with torch.no_grad():
            head.weight.normal_(0.0, 0.02)
        print("output layer initialised at zero: drawn from N(0, 0.02) so deltas are not all 0", file=sys.stderr)
    x = torch.randn(args.images, 3, args.size, args.size, device=device)
    channel_batch = args.channel_batch if args.channel_batch == "auto" else int(args.channel_batch)

    with ChannelAblation(model, args.layer, channel_batch=channel_batch, path=args.path, family=family) as engine:
        n_channels = engine.n_channels
        with torch.no_grad():
            model(x)  # warm-up: allocator, oneDNN/cuDNN primitives
        _, (y_pred, y_abl) = timed(lambda: engine(x), device)  # warm-up: the engine's weight layout
        forward_times, engine_times = [], []
        for _ in range(args.repeats):
            with torch.no_grad():
                forward_times.append(timed(lambda: model(x), device)[0])
            engine_times.append(timed(lambda: engine(x), device)[0])
        info = engine.describe()
    forward_s = statistics.median(forward_times)
    engine_s = statistics.median(engine_times)
    print(f"{args.arch} {args.head} {args.size}px x{args.images} on {device}: {info['target_layer']}, "
          f"{n_channels} channels, {info['path']} path", file=sys.stderr)
    print(f"forward {forward_s:.3f} s, engine {engine_s:.3f} s (all {n_channels} channels)", file=sys.stderr)

    sample = sample_channels(n_channels, args.channels_sample)
    t_naive, (y_ref, abl_ref) = timed(
        lambda: naive_ablation(model, info["target_layer"], x, channels=sample, family=family), device)
    naive_s = t_naive * n_channels / (len(sample) + 1)
    max_abs_err = max(
        (y_pred - y_ref).abs().max().item(), (y_abl[:, sample] - abl_ref).abs().max().item()
    )
    print(f"naive {t_naive:.2f} s for {len(sample)} channels -> {naive_s:.1f} s for all; "
          f"max |engine - naive| {max_abs_err:.3g}", file=sys.stderr)

    captum_s = captum_err = None
    if args.captum_sample > 0:
        csample = sample_channels(n_channels, args.captum_sample)
        conv = model.get_submodule(info["target_layer"])
        t_captum, attr = captum_time(model, conv, x, csample, n_channels, device)
        captum_s = forward_s + (t_captum - forward_s) * n_channels / (len(csample) + 1)
        captum_err = (attr - (y_pred[:, None] - y_abl[:, csample])).abs().max().item()
        print(f"captum {t_captum:.2f} s for {len(csample)} channels -> {captum_s:.1f} s for all; "
              f"max |captum - engine| {captum_err:.3g}", file=sys.stderr)

    result = {
        "arch": args.arch,
        "family": family.name,
        "head": args.head,
        "layer": info["target_layer"],
        "path": info["path"],
        "why_not_faster": info["why_not_faster"],
        "kept_tensors": info["kept_tensors"],
        "kept_by": info["kept_by"],
        "units": n_channels,
        "size": args.size,
        "images": args.images,
        "channels": n_channels,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "forward_s": round(forward_s, 4),
        "engine_s": round(engine_s, 4),
        "ratio_engine_to_forward": round(engine_s / forward_s, 3),
        # best of the repeats: less sensitive to other processes on a shared machine
        "ratio_engine_to_forward_min": round(min(engine_times) / min(forward_times), 3),
        "naive_s": round(naive_s, 2),
        "captum_s": None if captum_s is None else round(captum_s, 2),
        "speedup_vs_naive": round(naive_s / engine_s, 1),
        "speedup_vs_captum": None if captum_s is None else round(captum_s / engine_s, 1),
        "max_abs_err": max_abs_err,
        "captum_max_abs_err": captum_err,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
