"""Rule render_heatmaps: one PNG panel per image of a shard, by colour lookup."""

from ais.heatmap_stage import render_shard
from ais.logs import setup_logging

if __name__ == "__main__":
    log = setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
    render = snakemake.params.render  # noqa: F821
    render_shard(
        snakemake.input.figures,  # noqa: F821
        snakemake.input.maps,  # noqa: F821
        snakemake.output.panels,  # noqa: F821
        alpha=render["alpha"],
        harm_threshold=render["harm_threshold"],
        views=render["views"],
        log=log,
    )
