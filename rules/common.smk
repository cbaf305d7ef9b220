# Parse-time Python: config validation, paths, input functions. Rules hold no lambdas.
# The ais package is installed (`make` installs it into .venv; envs/ais.yaml installs it with pip).
from ais.config import ConfigError, check_paths, validate_config


try:
    _validated = validate_config(config, source="config")
    check_paths(_validated, source="config")  # data.sheet, data.root, model.weights exist
except ConfigError as exc:
    raise WorkflowError(f"Invalid configuration (nothing was run):\n{exc}") from None
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
    return {k: v for k, v in config["heatmaps"].items() if k not in _RENDER_KEYS and k != "gallery"}


def get_heatmap_render_params():
    """The heatmaps options that change only how maps are drawn (panels and gallery)."""
    return {k: config["heatmaps"][k] for k in _RENDER_KEYS}


def get_final_output():
    """The targets of the default target: the final outputs of every stage."""
    return [
        f"{R}/data/manifest.parquet",
        f"{R}/model/metrics.json",
        *get_ablation_shards(),
        f"{R}/fusion/summary.json",
        f"{R}/heatmaps/agreement.parquet",
        f"{R}/heatmaps/localization.json",
        f"{R}/heatmaps/gallery.png",
        *get_heatmap_panels(),
        f"{R}/report/index.html",
        f"{R}/report/summary.json",
    ]
