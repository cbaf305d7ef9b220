"""Rule render_heatmaps: one PNG panel per image of a shard, by colour lookup."""

from ais.stages import render_heatmaps

render_heatmaps.main(snakemake)  # noqa: F821 (injected by Snakemake)
