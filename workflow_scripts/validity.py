"""Rule validity: faithfulness, sanity checks and the summary of which map to trust."""

from ais.stages import validity

validity.main(snakemake)  # noqa: F821 (injected by Snakemake)
