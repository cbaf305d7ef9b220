"""Rule fuse_scores: fuse all ablation shards into AIS scores, data-set-level channel scores and a summary."""

from ais.stages import fuse_scores

fuse_scores.main(snakemake)  # noqa: F821 (injected by Snakemake)
