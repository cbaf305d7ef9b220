rule ablate_shard:
    input:
        manifest=f"{R}/data/manifest.parquet",
        weights=f"{R}/model/model.safetensors",
        spec=f"{R}/model/model.json",
    output:
        f"{R}/ablation/shard-{{shard}}.parquet",
    log:
        f"{LOGS}/ablation/shard-{{shard}}.log",
    benchmark:
        f"{BENCH}/ablation/shard-{{shard}}.tsv"
    params:
        ablation=config["ablation"],
        target_layer=config["model"]["target_layer"],
        seed=config["seed"],
    threads: 1
    resources:
        gpu=1,
    conda:
        "../envs/ais.yaml"
    script:
        "../workflow_scripts/ablate_shard.py"
