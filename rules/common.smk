# Parse-time Python: config validation, paths, input functions. Rules hold no lambdas.
# The ais package is installed (`make` installs it into .venv; envs/ais.yaml installs it with pip).
import os
import sys

from ais.config import ConfigError, check_paths, check_target_layer, count_sheet_rows, resolve_shards, validate_config


try:
    _validated = validate_config(config, source="config")
    check_paths(_validated, source="config")  # data.sheet, data.root, model.weights exist
    if workflow.is_main_process:  # jobs that parse again (cluster executors) were checked by the main process
        # a named layer builds the model once (seconds); layers found valid are cached
        check_target_layer(_validated, source="config", cache=".snakemake/ais/target_layers.json")
except ConfigError as exc:
    raise WorkflowError(f"Invalid configuration (nothing was run):\n{exc}") from None


def get_shard_count(cfg):
    """ablation.shards as a number, fixed when the DAG is built (``auto``: ais.config.resolve_shards).

    The main process passes its count to the jobs that parse the workflow again (cluster executors,
    whose --cores are the job's) through the environment variable AIS_ABLATION_SHARDS.
    """
    if cfg["ablation"]["shards"] != "auto":
        return int(cfg["ablation"]["shards"])
    if not workflow.is_main_process and os.environ.get("AIS_ABLATION_SHARDS", "").isdigit():
        return int(os.environ["AIS_ABLATION_SHARDS"])
    cores = _global_resource("_cores") or _global_resource("_nodes")
    rows = count_sheet_rows(cfg["data"]["sheet"]) if cfg["data"]["source"] == "sheet" else None
    n = resolve_shards(cfg, cores, _global_resource("gpu"), rows)
    os.environ["AIS_ABLATION_SHARDS"] = str(n)
    print(f"ablation.shards: auto -> {n}", file=sys.stderr)
    return n


def _global_resource(name):
    """A global resource of the run (--cores, --resources gpu=N) as a number, None when not set."""
    value = getattr(workflow.global_resources.get(name), "value", None)
    return int(value) if isinstance(value, (int, float)) else None


_validated["ablation"]["shards"] = get_shard_count(_validated)
config.clear()
config.update(_validated)

R = config["results"]
LOGS = f"{R}/logs"
BENCH = f"{R}/benchmarks"


wildcard_constraints:
    shard=r"\d+",


def get_sheet():
    """The image sheet intake reads: the generated demo sheet or the user's."""
    if config["data"]["source"] == "demo":
        return f"{R}/demo/sheet.csv"
    return config["data"]["sheet"]


def get_training_model_params():
    """The model section minus the target layer: choosing another layer reruns ablation, not training."""
    return {k: v for k, v in config["model"].items() if k != "target_layer"}


def get_ablation_shards():
    """Every ablation shard of the run."""
    return [f"{R}/ablation/shard-{i}.parquet" for i in range(config["ablation"]["shards"])]


def get_heatmap_figures():
    """The per-image figures table of every shard's heatmaps."""
    return [f"{R}/heatmaps/shard-{i}/figures.parquet" for i in range(config["ablation"]["shards"])]


def get_heatmap_maps():
    """The maps folder of every shard, in shard order."""
    return [f"{R}/heatmaps/shard-{i}/maps" for i in range(config["ablation"]["shards"])]


def get_heatmap_panels():
    """The PNG panels folder of every shard."""
    return [f"{R}/heatmaps/shard-{i}/panels" for i in range(config["ablation"]["shards"])]


_RENDER_KEYS = ("alpha", "harm_threshold", "views")


def get_heatmap_compute_params():
    """The heatmaps options that change the maps (not the rendering): a rendering option reruns only rendering."""
    return {k: v for k, v in config["heatmaps"].items()
            if k not in _RENDER_KEYS and k not in ("gallery", "external", "external_fixations")}


def get_heatmap_render_params():
    """The heatmaps options that change only how maps are drawn (panels and gallery)."""
    return {k: config["heatmaps"][k] for k in _RENDER_KEYS}


def get_final_output():
    """The targets of the default target: the final outputs of every stage."""
    return [
        f"{R}/data/manifest.parquet",
        f"{R}/model/metrics.json",
        f"{R}/model/model.onnx",
        f"{R}/model/model.int8.onnx",
        f"{R}/model/onnx.json",
        *get_ablation_shards(),
        f"{R}/fusion/summary.json",
        f"{R}/heatmaps/agreement.parquet",
        f"{R}/heatmaps/localization.json",
        f"{R}/heatmaps/gallery.png",
        *get_heatmap_panels(),
        f"{R}/report/index.html",
        f"{R}/report/summary.json",
        f"{R}/report/browser.html",
        *get_pruning_output(),  # rules/pruning.smk
        *get_validity_output(),  # rules/validity.smk
        *get_external_output(),
    ]
