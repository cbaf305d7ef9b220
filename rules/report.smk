rule top_channel_crops:
    input:
        manifest=f"{R}/data/manifest.parquet",
        weights=f"{R}/model/model.safetensors",
        spec=f"{R}/model/model.json",
        channels=f"{R}/fusion/channels.parquet",
    output:
        table=f"{R}/report/top_channels.parquet",
        figure=report(
            f"{R}/report/top_channels.png",
            caption="../report/top_channels.rst",
            category="Channels",
        ),
    log:
        f"{LOGS}/report/top_channel_crops.log",
    benchmark:
        f"{BENCH}/report/top_channel_crops.tsv"
    params:
        report=config["report"],
        split=config["ablation"]["split"],
        target_layer=config["model"]["target_layer"],
    threads: 1
    resources:
        gpu=1,
    conda:
        "../envs/ais.yaml"
    script:
        "../workflow_scripts/top_channel_crops.py"


rule build_report:
    input:
        manifest=f"{R}/data/manifest.parquet",
        rejected=f"{R}/data/rejected.csv",
        metrics=f"{R}/model/metrics.json",
        history=f"{R}/model/history.csv",
        predictions=f"{R}/model/predictions.parquet",
        training_curve=f"{R}/model/training_curve.png",
        scores=f"{R}/fusion/scores.parquet",
        channels=f"{R}/fusion/channels.parquet",
        fusion_summary=f"{R}/fusion/summary.json",
        agreement=f"{R}/heatmaps/agreement.parquet",
        localization=f"{R}/heatmaps/localization.json",
        gallery=f"{R}/heatmaps/gallery.png",
        gallery_selection=f"{R}/heatmaps/gallery.json",
        crops=f"{R}/report/top_channels.parquet",
        crops_figure=f"{R}/report/top_channels.png",
        panels=get_heatmap_panels(),
        validity=f"{R}/validity/summary.json",  # rules/validity.smk: the section "Which map to trust"
        faithfulness=f"{R}/validity/faithfulness.parquet",
    output:
        html=f"{R}/report/index.html",
        summary=f"{R}/report/summary.json",
        scores=report(
            f"{R}/report/figures/scores.png",
            caption="../report/scores.rst",
            category="Data",
        ),
        predicted=report(
            f"{R}/report/figures/predicted.png",
            caption="../report/predicted.rst",
            category="Training",
        ),
        channel_scores=report(
            f"{R}/report/figures/channel_scores.png",
            caption="../report/channel_scores.rst",
            category="Channels",
        ),
        agreement=report(
            f"{R}/report/figures/agreement.png",
            caption="../report/agreement.rst",
            category="Heatmaps",
        ),
    log:
        f"{LOGS}/report/build_report.log",
    params:
        config=config,
        benchmarks=BENCH,
    conda:
        "../envs/ais.yaml"
    script:
        "../workflow_scripts/build_report.py"


rule build_browser:
    input:
        figures=f"{R}/heatmaps/agreement.parquet",
        predictions=f"{R}/model/predictions.parquet",
        spec=f"{R}/model/model.json",
        scores=f"{R}/fusion/scores.parquet",
        maps=get_heatmap_maps(),
        panels=get_heatmap_panels(),
        faithfulness=f"{R}/validity/faithfulness.parquet",  # rules/validity.smk
    output:
        html=f"{R}/report/browser.html",
        data=f"{R}/report/browser-data.js",
        thumbs=directory(f"{R}/report/browser/thumbs"),
    log:
        f"{LOGS}/report/build_browser.log",
    benchmark:
        f"{BENCH}/report/build_browser.tsv"
    params:
        views=get_heatmap_render_params()["views"],
        config=config,
    conda:
        "../envs/ais.yaml"
    script:
        "../workflow_scripts/build_browser.py"
