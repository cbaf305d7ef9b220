"""Benchmark building the DAG (a dry run) for a large data set.

Writes, in a temporary folder, an image sheet of ``--images`` rows (100,000
by default) and a configuration with ``data.source: sheet`` and
``ablation.shards: --shards`` (1,000 by default; ``auto`` sizes them as a run
would, from the sheet's rows and the cores: ``--snakemake-args '--cores 16'``), then times
``snakemake -n`` on it with this repository's Snakefile and default profile.

The images need not exist: nothing at parse time reads the sheet or the
images (``rules/common.smk`` derives every path from the config, and the
shard count alone fixes the per-shard jobs), so the dry run plans intake,
training and every sharded stage (ablation, heatmaps, rendering) and the
gathering rules that follow, exactly as it would before a real run.

Each repeat is a fresh ``snakemake`` process (parse, DAG, job listing);
``--quiet`` runs are timed too (the same DAG without printing every job).
The target of the scale issue is a dry run under 30 s on a 2-core machine;
the last line printed is one JSON object.

    .venv/bin/python benchmarks/dag.py
    .venv/bin/python benchmarks/dag.py --images 100000 --shards 1000 --repeats 3
    .venv/bin/python benchmarks/dag.py --shards auto --snakemake-args '--cores 16'
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TARGET_S = 30.0


def write_sheet(path: Path, n_images: int) -> None:
    """An image sheet of ``n_images`` rows (path, score, split) whose images do not exist."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "score", "split"])
        splits = ("train", "val", "test")
        for i in range(n_images):
            writer.writerow([f"images/{i // 1000:03d}/img-{i:06d}.jpg", f"{1 + (i * 7919 % 4001) / 1000:.3f}", splits[i % 3]])


def shard_count(text: str) -> int | str:
    """``--shards``: a positive number or ``auto``."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--shards must be a positive number or auto, not {text!r}")
    return int(text)


def write_config(path: Path, sheet: Path, shards: int | str) -> None:
    path.write_text(
        "\n".join(
            [
                "results: results",
                "data:",
                "  source: sheet",
                f"  sheet: {sheet}",
                "  split_column: split",
                "ablation:",
                f"  shards: {shards}",
                "",
            ]
        )
    )


def dry_run(workdir: Path, config: Path, quiet: bool, extra: list[str]) -> tuple[float, str]:
    """Seconds of one ``snakemake -n`` process and its output."""
    cmd = [SNAKEMAKE, "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile", str(config), *extra]
    if quiet:
        cmd.append("--quiet")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"snakemake -n failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def job_counts(output: str) -> dict[str, int]:
    """The dry run's job table (``job  count`` rows) as a dict; ``total`` included."""
    table = output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000, help="rows of the image sheet")
    parser.add_argument("--shards", type=shard_count, default=1_000, help="ablation.shards: a number or auto")
    parser.add_argument("--repeats", type=int, default=3, help="dry runs timed (each a fresh process)")
    parser.add_argument(
        "--snakemake-args",
        default="",
        help="more snakemake arguments, e.g. '--profile profiles/slurm --workflow-profile none' (needs the plugin)",
    )
    args = parser.parse_args(argv)
    extra = shlex.split(args.snakemake_args)

    with tempfile.TemporaryDirectory(prefix="ais-dag-") as tmp:
        work = Path(tmp)
        sheet = work / "data" / "sheet.csv"
        sheet.parent.mkdir()
        write_sheet(sheet, args.images)
        (work / "config.yaml").write_text("{}\n")  # the Snakefile's configfile; everything comes from --configfile
        config = work / "large.yaml"
        write_config(config, sheet, args.shards)

        full, quiet = [], []
        output = ""
        for i in range(args.repeats):
            seconds, output = dry_run(work, config, False, extra)
            full.append(seconds)
            quiet.append(dry_run(work, config, True, extra)[0])
            print(f"repeat {i + 1}/{args.repeats}: snakemake -n {seconds:.1f} s, snakemake -n --quiet {quiet[-1]:.1f} s", flush=True)
        counts = job_counts(output)

    dry_run_s = statistics.median(full)
    result = {
        "images": args.images,
        "shards": args.shards,
        "snakemake_args": args.snakemake_args,
        "jobs": counts.get("total"),
        "jobs_per_rule": {k: v for k, v in counts.items() if k != "total"},
        "dry_run_s": round(dry_run_s, 2),
        "dry_run_quiet_s": round(statistics.median(quiet), 2),
        "dry_run_s_all": [round(s, 2) for s in full],
        "target_s": TARGET_S,
        "ratio_to_target": round(dry_run_s / TARGET_S, 3),
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    verdict = "within" if dry_run_s < TARGET_S else "OVER"
    print(f"DAG of {result['jobs']} jobs ({args.images} images, {args.shards} shards): median {dry_run_s:.1f} s, "
          f"{result['ratio_to_target']:.2f}x the {TARGET_S:.0f} s target ({verdict})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
