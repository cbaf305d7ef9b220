"""Rule finetune_model: train the realism regressor, write checkpoint, history, predictions, metrics."""

from pathlib import Path

from ais.gpu import start_gpu_job

if __name__ == "__main__":
    log = start_gpu_job(snakemake.log[0], snakemake.threads)  # noqa: F821 (injected by Snakemake)

    from ais.training import train_model

    params = snakemake.params  # noqa: F821
    train_model(
        snakemake.input.manifest,  # noqa: F821
        Path(snakemake.output.spec).parent,  # noqa: F821
        params.model,
        params.train,
        params.seed,
        log=log,
    )
