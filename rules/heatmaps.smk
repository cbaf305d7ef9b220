rule compute_heatmaps:
    input:
        shard=f"{R}/ablation/shard-{{shard}}.parquet",
        scores=f"{R}/fusion/scores.parquet",
        channels=f"{R}/fusion/channels.parquet",
        manifest=f"{R}/data/manifest.parquet",
        weights=f"{R}/model/model.safetensors",
        spec=f"{R}/model/model.json",
    output:
        maps=directory(f"{R}/heatmaps/shard-{{shard}}/maps"),
        figures=f"{R}/heatmaps/shard-{{shard}}/figures.parquet",
    log:
        f"{LOGS}/heatmaps/shard-{{shard}}/maps.log",
    benchmark:
        f"{BENCH}/heatmaps/shard-{{shard}}/maps.tsv"
    params:
        heatmaps=get_heatmap_compute_params(),
        target_layer=config["model"]["target_layer"],
    threads: 1
    resources:
        gpu=1,
    conda:
        "../envs/ais.yaml"
    script:
        "../workflow_scripts/compute_heatmaps.py"


rule render_heatmaps:
    input:
        figures=f"{R}/heatmaps/shard-{{shard}}/figures.parquet",
        maps=f"{R}/heatmaps/shard-{{shard}}/maps",
        manifest=f"{R}/data/manifest.parquet",
        predictions=f"{R}/model/predictions.parquet",
        spec=f"{R}/model/model.json",
    output:
        panels=directory(f"{R}/heatmaps/shard-{{shard}}/panels"),
    log:
        f"{LOGS}/heatmaps/shard-{{shard}}/panels.log",
    benchmark:
        f"{BENCH}/heatmaps/shard-{{shard}}/panels.tsv"
    params:
        render=get_heatmap_render_params(),
    threads: 1
    conda:
        "../envs/ais.yaml"
    script:
        "../workflow_scripts/render_heatmaps.py"


rule summarize_heatmaps:
    input:
        figures=get_heatmap_figures(),
        spec=f"{R}/model/model.json",
    output:
        table=f"{R}/heatmaps/agreement.parquet",
        localization=f"{R}/heatmaps/localization.json",
    log:
        f"{LOGS}/heatmaps/summarize_heatmaps.log",
    conda:
        "../envs/ais.yaml"
    script:
        "../workflow_scripts/summarize_heatmaps.py"


rule plot_gallery:
    input:
        table=f"{R}/heatmaps/agreement.parquet",
        maps=get_heatmap_maps(),
    output:
        gallery=report(
            f"{R}/heatmaps/gallery.png",
            caption="../report/heatmap_gallery.rst",
            category="Heatmaps",
        ),
        selection=f"{R}/heatmaps/gallery.json",
    log:
        f"{LOGS}/heatmaps/plot_gallery.log",
    params:
        render=get_heatmap_render_params(),
        gallery=config["heatmaps"]["gallery"],
    conda:
        "../envs/ais.yaml"
    script:
        "../workflow_scripts/plot_gallery.py"
