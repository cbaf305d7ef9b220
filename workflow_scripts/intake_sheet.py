"""Rule intake_sheet: check the image sheet and write the manifest (ais.stages.intake_sheet)."""

from ais.stages import intake_sheet

intake_sheet.main(snakemake)  # noqa: F821
