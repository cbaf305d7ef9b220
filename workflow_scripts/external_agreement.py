"""Rule external_agreement: every method's maps scored against external saliency maps (CC, SIM, KLD, NSS, AUC)."""

from ais.stages import external_agreement

external_agreement.main(snakemake)  # noqa: F821 (injected by Snakemake)
