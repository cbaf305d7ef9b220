"""Rule prune_units: units ranked on one split, zeroed k at a time, scored on the held-out test images."""

from ais.stages import prune_units

prune_units.main(snakemake)  # noqa: F821 (injected by Snakemake)
