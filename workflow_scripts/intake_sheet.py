"""Rule intake_sheet: check the image sheet and write the manifest."""

import sys

from ais.data import BadRowsError, SheetError, run_intake
from ais.logs import setup_logging
from ais.provenance import provenance

if __name__ == "__main__":
    log = setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
    params = snakemake.params  # noqa: F821
    try:
        run_intake(
            params.data,
            params.seed,
            snakemake.output.manifest,  # noqa: F821
            snakemake.output.rejected,  # noqa: F821
            sheet=snakemake.input.sheet if params.demo else None,  # noqa: F821
            mask_column="mask" if params.demo else None,
            metadata=provenance({"data": params.data, "seed": params.seed}),
        )
    except (BadRowsError, SheetError) as exc:  # the user's data, not a bug: the message, no traceback
        log.error("%s", exc)
        sys.exit(1)
