"""Rule top_channel_crops: the image crops that activate the top channels most."""

from ais.stages import top_channel_crops

top_channel_crops.main(snakemake)  # noqa: F821 (injected by Snakemake)
