# AIS: ablation-based image-realism saliency.
# finetune -> per-shard channel ablation (Parquet) -> fusion -> heatmaps -> report
from snakemake.utils import min_version

min_version("8.20")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/model.smk"
include: "rules/export.smk"
include: "rules/ablation.smk"
include: "rules/fusion.smk"
include: "rules/heatmaps.smk"
include: "rules/report.smk"
include: "rules/pruning.smk"
include: "rules/validity.smk"


report: "report/workflow.rst"


rule all:
    input:
        get_final_output(),
    default_target: True
