rule fuse_scores:
    input:
        shards=get_ablation_shards(),
    output:
        scores=f"{R}/fusion/scores.parquet",
        channels=f"{R}/fusion/channels.parquet",
        summary=f"{R}/fusion/summary.json",
    log:
        f"{LOGS}/fusion/fuse_scores.log",
    benchmark:
        f"{BENCH}/fusion/fuse_scores.tsv"
    params:
        fusion=config["fusion"],
        seed=config["seed"],
    conda:
        "../envs/ais.yaml"
    script:
        "../workflow_scripts/fuse_scores.py"
