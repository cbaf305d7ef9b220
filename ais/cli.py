"""The ``ais`` console script: ``ais explain IMAGE_OR_FOLDER... --run results/ [--out DIR]``.

An entry point, like the workflow's scripts: it parses the command line,
sets up logging and calls the command's stage (:mod:`ais.stages.explain`).
The stage is imported by name when the command runs (:data:`COMMANDS`), so
``ais --help`` answers without importing torch. A problem that is the user's
to fix (an unfinished run, a bad image) is printed as its message alone and
exits with status 2, as argparse does for a bad option.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

logger = logging.getLogger(__name__)

#: Subcommand -> the stage module that runs it (its ``run`` takes the parsed options).
COMMANDS = {"explain": "ais.stages.explain"}
#: Exit status of a problem the user must fix (argparse's own for bad options).
USER_ERROR = 2

EXPLAIN_EPILOG = """\
Each image is checked as intake checks the sheet's images (same messages); then, as the workflow does for an
unlabelled image ablated with ablation.split: all, every unit of the target layer is ablated for it (its own
direction weights, -dy per unit), its AIS weights are the run's data-set-level channel scores
(results/fusion/channels.parquet), and the run's map methods and views are drawn.

Writes in --out: panels/<id>.png, maps/<id>.npz (as results/heatmaps/shard-*/maps), explain.parquet and
explain.csv (one row per image: prediction; class probabilities for classifiers; Monte-Carlo dropout mean and
standard deviation when the model has dropout; map scales; agreement of |AIS| with the reference maps).

example:
  ais explain photos/ new.jpg --run results/ --out explained/
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``ais`` parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="ais", description="Ablation-based image-realism saliency: use a finished workflow run.",
        epilog="Run `ais COMMAND --help` for a command's options. The workflow itself runs with snakemake.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    ex = sub.add_parser(
        "explain", help="score and explain new images with a finished run",
        description="Predict, estimate the uncertainty of and explain new images (files or folders) with the "
                    "model and the data-set-level channel scores of a finished run.",
        epilog=EXPLAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                    help="image files, or folders searched recursively for image files (hidden ones skipped)")
    ex.add_argument("--run", required=True, metavar="RESULTS",
                    help="the results folder of a finished run (the config's `results`, e.g. results/)")
    ex.add_argument("--out", default=None, metavar="DIR", help="output folder (default: RESULTS/explain)")
    ex.add_argument("--batch-size", type=_positive, default=8, metavar="N", help="images per pass (default 8)")
    ex.add_argument("--device", default=None,
                    help="torch device, e.g. cpu or cuda:1 (default: CUDA when available, else the CPU)")
    ex.add_argument("--mc-samples", type=_non_negative, default=None, metavar="S",
                    help="Monte-Carlo dropout samples per image when the model has dropout; 0: none "
                         "(default: the run's uncertainty.mc_samples)")
    ex.add_argument("--seed", type=int, default=None, help="seed of the Monte-Carlo dropout masks (default: the run's)")
    ex.add_argument("--on-bad-image", choices=("error", "skip"), default="error",
                    help="error: stop before any compute, listing every bad image (default); skip: leave them out")
    ex.add_argument("--workers", type=_non_negative, default=0, metavar="N",
                    help="processes decoding the next images while the current ones are explained (default 0)")
    progress = ex.add_mutually_exclusive_group()
    progress.add_argument("--progress-bar", dest="progress_bar", action="store_true", default=None,
                          help="a progress bar even when stderr is not a terminal")
    progress.add_argument("--no-progress-bar", dest="progress_bar", action="store_false",
                          help="progress lines even on a terminal")
    ex.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _explain(args: argparse.Namespace) -> None:
    from pathlib import Path

    stage = importlib.import_module(COMMANDS["explain"])
    out = args.out if args.out is not None else Path(args.run) / "explain"
    stage.run(args.inputs, args.run, out, batch_size=args.batch_size, device=args.device,
              mc_samples=args.mc_samples, seed=args.seed, on_bad_image=args.on_bad_image, workers=args.workers,
              progress_bar=args.progress_bar)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args = build_parser().parse_args(argv)
    from ais.errors import UserError
    from ais.logs import setup_logging

    setup_logging(None, logging.WARNING if args.quiet else logging.INFO)
    try:
        {"explain": _explain}[args.command](args)
    except UserError as exc:
        print(f"ais {args.command}: {exc}", file=sys.stderr)
        return USER_ERROR
    return 0
