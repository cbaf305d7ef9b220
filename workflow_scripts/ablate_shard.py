"""Rule ablate_shard: every channel of the target layer ablated for the images of one shard."""

from ais.stages import ablate_shard

ablate_shard.main(snakemake)  # noqa: F821 (injected by Snakemake)
