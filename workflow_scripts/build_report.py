"""Rule build_report: results/report/index.html and summary.json (:mod:`ais.stages.build_report`)."""

from ais.stages import build_report

build_report.main(snakemake)  # noqa: F821 (injected by Snakemake)
