"""Rule plot_gallery: matplotlib figure of the best-, median- and worst-predicted images' heatmaps."""

from ais.heatmap_stage import plot_gallery
from ais.logs import setup_logging

if __name__ == "__main__":
    log = setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
    render = snakemake.params.render  # noqa: F821
    plot_gallery(
        snakemake.input.table,  # noqa: F821
        dict(enumerate(snakemake.input.maps)),  # noqa: F821 (shard i's maps folder, in shard order)
        snakemake.output.gallery,  # noqa: F821
        n_per_group=snakemake.params.gallery,  # noqa: F821
        alpha=render["alpha"],
        harm_threshold=render["harm_threshold"],
        views=render["views"],
        log=log,
    )
