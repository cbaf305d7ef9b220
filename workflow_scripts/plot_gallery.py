"""Rule plot_gallery: matplotlib figure of the best-, median- and worst-predicted images' heatmaps."""

from ais.stages import plot_gallery

plot_gallery.main(snakemake)  # noqa: F821 (injected by Snakemake)
