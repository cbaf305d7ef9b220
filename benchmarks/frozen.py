"""Frozen backbone: training the head on cached features vs running the frozen backbone every step.

Both trainings use the same seed, images and configuration
(``train.freeze_backbone: true``; ``train.cache_features`` true vs false),
so they give the same head (``max_abs_head_diff``, to float rounding). The
last line is one JSON object: ``ratio_ordinary_to_cached`` (wall-clock of
the whole ``ais.training.train`` call, feature computation included),
``seconds_cached``, ``seconds_ordinary``, ``max_abs_head_diff``.

    .venv/bin/python benchmarks/frozen.py --arch resnet18 --images 64 --size 64 --epochs 10
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ais.families import family_for
from ais.models import build_model
from ais.tasks import get_task
from ais.training import train

logger = logging.getLogger(__name__)


def make_images(root: Path, n: int, size: int) -> pd.DataFrame:
    """``n`` noisy PNGs whose brightness tracks a score: 3/4 train, 1/4 val (a manifest)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        score = float(rng.uniform(1, 5))
        pixels = (rng.normal(0, 25, (size, size, 3)) + 45 * score).clip(0, 255).astype(np.uint8)
        path = root / f"img{i:04d}.png"
        Image.fromarray(pixels).save(path)
        rows.append({"image_id": f"img{i:04d}", "path": str(path), "y_true": score,
                     "split": "train" if i % 4 else "val"})
    return pd.DataFrame(rows)


def run_once(args: argparse.Namespace, manifest: pd.DataFrame, work: Path, cache: bool) -> tuple[float, dict]:
    """Seconds of one training and its head's tensors."""
    torch.manual_seed(0)
    model = build_model(args.arch, "mlp")
    mcfg = {"arch": args.arch, "head": "mlp", "weights": "none", "input_size": args.size}
    tcfg = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": 1e-3, "scheduler": "none", "warmup_epochs": 0,
            "patience": args.epochs, "augment": True, "freeze_backbone": True, "cache_features": cache}
    t0 = time.perf_counter()
    result = train(manifest, get_task("regression"), family_for(args.arch), model, mcfg, tcfg, seed=0, device="cpu",
                   resume_dir=work / f"resume-{cache}")
    seconds = time.perf_counter() - t0
    from ais.models import mlp_head

    return seconds, {k: v.clone() for k, v in mlp_head(result.model).state_dict().items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = make_images(work, args.images, args.size)
        cached_s, cached = run_once(args, manifest, work, cache=True)
        plain_s, plain = run_once(args, manifest, work, cache=False)
    diff = max(float((cached[k] - plain[k]).abs().max()) for k in plain)
    print(f"{args.arch} {args.size}px, {args.images} images, {args.epochs} epochs (augment on): "
          f"cached {cached_s:.2f} s, ordinary {plain_s:.2f} s")
    print(json.dumps({"arch": args.arch, "size": args.size, "images": args.images, "epochs": args.epochs,
                      "threads": torch.get_num_threads(), "seconds_cached": round(cached_s, 3),
                      "seconds_ordinary": round(plain_s, 3), "ratio_ordinary_to_cached": round(plain_s / cached_s, 2),
                      "max_abs_head_diff": diff}))


if __name__ == "__main__":
    main()
