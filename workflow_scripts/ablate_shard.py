"""Rule ablate_shard: every channel of the target layer ablated for the images of one shard."""

from pathlib import Path

from ais.gpu import start_gpu_job

if __name__ == "__main__":
    log = start_gpu_job(snakemake.log[0], snakemake.threads)  # noqa: F821 (injected by Snakemake)

    from ais.ablation import run_shard

    params = snakemake.params  # noqa: F821
    run_shard(
        manifest_path=snakemake.input.manifest,  # noqa: F821
        model_dir=Path(snakemake.input.spec).parent,  # noqa: F821
        out_path=snakemake.output[0],  # noqa: F821
        shard=int(snakemake.wildcards.shard),  # noqa: F821
        n_shards=params.ablation["shards"],
        split=params.ablation["split"],
        target_layer=params.target_layer,
        batch_size=params.ablation["batch_size"],
        channel_batch=params.ablation["channel_batch"],
        config={"ablation": params.ablation, "target_layer": params.target_layer, "seed": params.seed},
        log=log,
    )
