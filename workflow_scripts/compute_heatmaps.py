"""Rule compute_heatmaps: AIS, direction, Grad-CAM and Grad-CAM++ maps and per-image figures for one shard."""

from ais.stages import compute_heatmaps

compute_heatmaps.main(snakemake)  # noqa: F821 (injected by Snakemake)
