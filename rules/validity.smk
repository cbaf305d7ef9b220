# Which map to trust: faithfulness (RISE deletion / insertion), cascading-randomisation sanity checks and
# the summary of every validity measure (pruning and external agreement come from rules/pruning.smk).


def get_validity_params():
    """What changes the validity outputs: its section, the map options, the fusion (sanity's AIS maps), the seed."""
    return {
        "validity": {k: v for k, v in config["validity"].items() if k != "pruning"},
        "heatmaps": get_heatmap_compute_params(),
        "fusion": {k: config["fusion"][k] for k in ("scope", "magnitude")},  # how sanity's AIS maps are fused
        "seed": config["seed"],
    }


def get_validity_output():
    """The outputs of rule validity."""
    return [f"{R}/validity/{name}" for name in ("faithfulness.parquet", "sanity.parquet", "summary.json")]


rule validity:
    input:
        figures=f"{R}/heatmaps/agreement.parquet",
        maps=get_heatmap_maps(),
        manifest=f"{R}/data/manifest.parquet",
        weights=f"{R}/model/model.safetensors",
        spec=f"{R}/model/model.json",
        scores=f"{R}/fusion/scores.parquet",
        predictions=f"{R}/model/predictions.parquet",
        pruning=get_pruning_output(),
        external=get_external_output(),
    output:
        faithfulness=f"{R}/validity/faithfulness.parquet",
        sanity=f"{R}/validity/sanity.parquet",
        summary=f"{R}/validity/summary.json",
    log:
        f"{LOGS}/validity/validity.log",
    benchmark:
        f"{BENCH}/validity/validity.tsv"
    params:
        config=get_validity_params(),
        target_layer=config["model"]["target_layer"],
    threads: 1
    resources:
        gpu=1,
    conda:
        "../envs/ais.yaml"
    script:
        "../workflow_scripts/validity.py"
