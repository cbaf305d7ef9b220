"""Rule finetune_model: train the model, write checkpoint, history, predictions, metrics."""

from ais.stages import finetune_model

finetune_model.main(snakemake)  # noqa: F821 (injected by Snakemake)
