"""Rule top_channel_crops: the image crops that activate the top channels most."""

from pathlib import Path

from ais.gpu import start_gpu_job

if __name__ == "__main__":
    start_gpu_job(snakemake.log[0], snakemake.threads)  # noqa: F821 (injected by Snakemake)

    import torch

    from ais.crops import run_crops
    from ais.provenance import provenance

    params = snakemake.params  # noqa: F821
    run_crops(
        manifest_path=snakemake.input.manifest,  # noqa: F821
        model_dir=str(Path(snakemake.input.spec).parent),  # noqa: F821
        channels_path=snakemake.input.channels,  # noqa: F821
        out_table=snakemake.output.table,  # noqa: F821
        out_png=snakemake.output.figure,  # noqa: F821
        split=params.split,
        target_layer=params.target_layer,
        k=params.report["top_channels"],
        n_crops=params.report["crops_per_channel"],
        device="cuda" if torch.cuda.is_available() else "cpu",
        metadata={"provenance": provenance({"report": params.report, "split": params.split})},
    )
