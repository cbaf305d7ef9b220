"""Rule fuse_scores: fuse all ablation shards into AIS scores, data-set-level channel scores and a summary."""

from ais.fusion import fuse_shards
from ais.logs import setup_logging
from ais.provenance import provenance

if __name__ == "__main__":
    log = setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
    params = snakemake.params  # noqa: F821
    fusion = params.fusion
    fuse_shards(
        list(snakemake.input.shards),  # noqa: F821
        snakemake.output.scores,  # noqa: F821
        snakemake.output.channels,  # noqa: F821
        scope=fusion["scope"],
        magnitude=fusion["magnitude"],
        n_boot=fusion["bootstrap"],
        seed=params.seed,
        n_splits=fusion["reliability_splits"],
        metadata=provenance({"fusion": fusion, "seed": params.seed}),
        out_summary=snakemake.output.summary,  # noqa: F821
        log=log,
    )
