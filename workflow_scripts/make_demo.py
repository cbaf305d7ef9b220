"""Rule make_demo: generate the offline synthetic realism data set."""

from pathlib import Path

from ais.demo import generate_demo
from ais.logs import setup_logging

if __name__ == "__main__":
    setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
    demo = snakemake.params.demo  # noqa: F821
    generate_demo(Path(snakemake.output.sheet).parent, **demo)  # noqa: F821
