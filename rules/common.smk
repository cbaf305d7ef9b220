# Parse-time Python: config validation, paths, input functions. Rules hold no lambdas.
import os
import sys
from pathlib import Path

# The ais package, also without an install and in jobs (scripts, conda envs, cluster jobs).
sys.path.insert(0, workflow.basedir)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])))

from ais.config import ConfigError, validate_config


try:
    _validated = validate_config(config, source="config")
except ConfigError as exc:
    raise WorkflowError(f"Invalid configuration (nothing was run):\n{exc}") from None
config.clear()
config.update(_validated)

R = config["results"]
LOGS = f"{R}/logs"
BENCH = f"{R}/benchmarks"
SCRIPTS = Path(workflow.basedir) / "workflow_scripts"


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


def get_final_output():
    """The targets of the default target: the final outputs of every stage."""
    return [
        f"{R}/data/manifest.parquet",
        f"{R}/model/metrics.json",
        *get_ablation_shards(),
    ]
