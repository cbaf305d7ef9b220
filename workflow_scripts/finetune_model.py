"""Rule finetune_model: train the realism regressor, write checkpoint, history, predictions, metrics."""

from pathlib import Path

from ais.gpu import claim_gpu

if __name__ == "__main__":
    claim_gpu()  # before torch initialises CUDA

    import torch

    from ais.logs import setup_logging
    from ais.training import train_model

    log = setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
    torch.set_num_threads(max(1, min(snakemake.threads, torch.get_num_threads())))  # noqa: F821
    params = snakemake.params  # noqa: F821
    train_model(
        snakemake.input.manifest,  # noqa: F821
        Path(snakemake.output.spec).parent,  # noqa: F821
        params.model,
        params.train,
        params.seed,
        log=log,
    )
