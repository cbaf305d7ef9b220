# Parse-time Python: config validation, paths, input functions. Rules hold no lambdas.
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # the ais package, also without an install

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


def get_final_output():
    """What `rule all` builds: the final outputs of every stage."""
    return [f"{R}/data/manifest.parquet"]
