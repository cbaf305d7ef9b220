# Validity measures of T2: pruning generalisation (always) and agreement with external maps (when
# heatmaps.external is set). Included from the Snakefile before rules/validity.smk, which reads them.


def get_pruning_output():
    """The pruning-generalisation table (rule prune_units)."""
    return [f"{R}/validity/pruning.parquet"]


def get_external_output():
    """The external-agreement table when heatmaps.external is set, else nothing."""
    return [f"{R}/validity/external.parquet"] if config["heatmaps"].get("external") else []


def get_external_inputs(wildcards):
    """The folders of external maps (and fixations) the rule reads: a changed folder reruns it."""
    heat = config["heatmaps"]
    return {k: heat[k] for k in ("external", "external_fixations") if heat.get(k)}


rule prune_units:
    input:
        manifest=f"{R}/data/manifest.parquet",
        weights=f"{R}/model/model.safetensors",
        spec=f"{R}/model/model.json",
    output:
        f"{R}/validity/pruning.parquet",
    log:
        f"{LOGS}/validity/prune_units.log",
    benchmark:
        f"{BENCH}/validity/prune_units.tsv"
    params:
        pruning=config["validity"]["pruning"],
        bootstrap=config["train"]["bootstrap"],
        fusion={k: config["fusion"][k] for k in ("scope", "magnitude")},  # what the AIS scores depend on
        target_layer=config["model"]["target_layer"],
        seed=config["seed"],
    threads: 1
    resources:
        gpu=1,
    conda:
        "../envs/ais.yaml"
    script:
        "../workflow_scripts/prune_units.py"


rule external_agreement:
    input:
        unpack(get_external_inputs),
        figures=get_heatmap_figures(),
        maps=get_heatmap_maps(),
    output:
        f"{R}/validity/external.parquet",
    log:
        f"{LOGS}/validity/external_agreement.log",
    params:
        external=config["heatmaps"]["external"],
        fixations=config["heatmaps"]["external_fixations"],
        seed=config["seed"],
    conda:
        "../envs/ais.yaml"
    script:
        "../workflow_scripts/external_agreement.py"
