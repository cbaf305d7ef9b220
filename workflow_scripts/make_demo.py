"""Rule make_demo: generate the offline synthetic realism data set (ais.stages.make_demo)."""

from ais.stages import make_demo

make_demo.main(snakemake)  # noqa: F821
