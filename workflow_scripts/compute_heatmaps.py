"""Rule compute_heatmaps: AIS, direction, Grad-CAM and Grad-CAM++ maps and per-image figures for one shard."""

from pathlib import Path

from ais.gpu import start_gpu_job

if __name__ == "__main__":
    log = start_gpu_job(snakemake.log[0], snakemake.threads)  # noqa: F821 (injected by Snakemake)

    from ais.heatmap_stage import compute_shard

    params = snakemake.params  # noqa: F821
    inp, out = snakemake.input, snakemake.output  # noqa: F821
    compute_shard(
        ablation_shard=inp.shard,
        scores_path=inp.scores,
        channels_path=inp.channels,
        manifest_path=inp.manifest,
        model_dir=Path(inp.spec).parent,
        maps_dir=out.maps,
        figures_path=out.figures,
        shard=int(snakemake.wildcards.shard),  # noqa: F821
        target_layer=params.target_layer,
        batch_size=params.heatmaps["batch_size"],
        config={"heatmaps": params.heatmaps, "target_layer": params.target_layer},
        log=log,
    )
