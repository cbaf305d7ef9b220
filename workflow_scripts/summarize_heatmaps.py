"""Rule summarize_heatmaps: gather the per-shard figures into agreement.parquet and localization.json."""

from ais.heatmap_stage import summarize
from ais.logs import setup_logging
from ais.provenance import provenance

if __name__ == "__main__":
    log = setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
    summarize(
        list(snakemake.input.figures),  # noqa: F821
        snakemake.output.table,  # noqa: F821
        snakemake.output.localization,  # noqa: F821
        metadata=provenance(),
        log=log,
    )
