"""Rule build_browser: results/report/browser.html and its data (:mod:`ais.stages.build_browser`)."""

from ais.stages import build_browser

build_browser.main(snakemake)  # noqa: F821 (injected by Snakemake)
