"""Rule intake_sheet: check the image sheet and write the manifest."""

from ais.data import run_intake
from ais.logs import setup_logging
from ais.provenance import provenance

if __name__ == "__main__":
    setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
    params = snakemake.params  # noqa: F821
    run_intake(
        params.data,
        params.seed,
        snakemake.output.manifest,  # noqa: F821
        snakemake.output.rejected,  # noqa: F821
        sheet=snakemake.input.sheet if params.demo else None,  # noqa: F821
        mask_column="mask" if params.demo else None,
        metadata=provenance({"data": params.data, "seed": params.seed}),
    )
