"""Rule summarize_heatmaps: gather the per-shard figures into agreement.parquet and localization.json."""

from ais.stages import summarize_heatmaps

summarize_heatmaps.main(snakemake)  # noqa: F821 (injected by Snakemake)
