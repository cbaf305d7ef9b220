"""Only stale stages rerun: dry runs on one finished tiny run, each after one config change.

Snakemake reruns a job when its ``params:`` change and then everything downstream of it.
These tests change one option at a time (``--configfile`` with an override file) and read
the rule names off the dry run's job table. The expected set is computed from the rule
graph (``snakemake --rulegraph``): the stage that reads the option and everything
downstream of it, so the cases hold as stages are added after fusion (heatmaps, report).
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import run_snakemake

#: Rules that only draw (maps -> pictures) or assemble the report: the only rules a
#: rendering option may rerun on its own (verb_noun names, see STYLE.md).
RENDER_PREFIXES = ("render_", "plot_", "build_report")


@dataclass
class DryRun:
    jobs: Counter  # rule -> number of jobs that would run ('all' left out)
    params_changed: set[str]  # rules listed under "params have changed since last execution"
    output: str

    @property
    def rules(self) -> set[str]:
        return set(self.jobs)


@pytest.fixture(scope="module")
def finished_run(tiny_workflow: Path) -> Path:
    """The suite's shared tiny run (conftest ``tiny_workflow``), finished: only dry runs touch it here."""
    return tiny_workflow


@pytest.fixture(scope="module")
def graph(finished_run: Path) -> dict[str, set[str]]:
    """The rule graph: rule -> the rules that consume its outputs ('all' left out)."""
    dot = run_snakemake(finished_run, "--rulegraph", "--configfile", str(finished_run / "config.yaml")).stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, flags=re.M))
    children: dict[str, set[str]] = {name: set() for name in names.values() if name != "all"}
    for src, dst in re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.M):
        if names[dst] != "all":
            children[names[src]].add(names[dst])
    assert "finetune_model" in children and "ablate_shard" in children, dot
    return children


def downstream(graph: dict[str, set[str]], rules: set[str]) -> set[str]:
    """``rules`` and every rule downstream of them."""
    seen, todo = set(), list(rules)
    while todo:
        rule = todo.pop()
        if rule not in seen:
            seen.add(rule)
            todo.extend(graph.get(rule, ()))
    return seen


def upstream(graph: dict[str, set[str]], rule: str) -> set[str]:
    """Every rule upstream of ``rule`` (not ``rule`` itself)."""
    return {r for r in graph if r != rule and rule in downstream(graph, {r})}


def parse_dry_run(output: str) -> DryRun:
    """Rule names and job counts from the dry run's "Job stats" table; params-changed rules from "Reasons"."""
    if "Nothing to be done" in output:
        return DryRun(Counter(), set(), output)
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    jobs = Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M)})
    jobs.pop("total", None)
    jobs.pop("all", None)
    changed: set[str] = set()
    section = re.search(r"params have changed since last execution:\n\s+(.+)", output)
    if section:
        changed = {name.strip() for name in section[1].split(",")} - {"all"}
    return DryRun(jobs, changed, output)


def dry_run(work: Path, change: dict | None = None) -> DryRun:
    """``snakemake -n`` on the finished run, with ``change`` (a nested config dict) merged over its config."""
    configs = [str(work / "config.yaml")]
    with tempfile.TemporaryDirectory() as tmp:  # outside the run: it stays a clean run
        if change:
            override = Path(tmp) / "override.yaml"
            override.write_text(yaml.safe_dump(change))
            configs.append(str(override))
        proc = run_snakemake(work, "-n", "--cores", "2", "--configfile", *configs)
    return parse_dry_run(proc.stdout + proc.stderr)


def require_rule(graph: dict[str, set[str]], rule: str) -> None:
    if rule not in graph:
        pytest.skip(f"rule {rule} is not part of the workflow yet")


def test_parse_dry_run_table():
    out = (
        "Job stats:\njob               count\n--------------  -------\nfinetune_model        1\n"
        "ablate_shard          2\nall                   1\ntotal                 4\n\n"
        "Reasons:\n    params have changed since last execution:\n        finetune_model\n"
    )
    run = parse_dry_run(out)
    assert run.jobs == Counter(finetune_model=1, ablate_shard=2)
    assert run.params_changed == {"finetune_model"}
    assert parse_dry_run("Building DAG of jobs...\nNothing to be done (all requested files are present and up to date).").jobs == Counter()


def test_nothing_changed_reruns_nothing(finished_run: Path):
    run = dry_run(finished_run)
    assert run.jobs == Counter(), run.output[-3000:]
    assert "Nothing to be done" in run.output


def test_training_option_reruns_everything_from_training(finished_run: Path, graph):
    run = dry_run(finished_run, {"train": {"lr": 0.002}})
    assert run.params_changed == {"finetune_model"}, run.output[-3000:]
    assert run.rules == downstream(graph, {"finetune_model"})
    assert {"finetune_model", "ablate_shard"} <= run.rules
    assert not run.rules & {"make_demo", "intake_sheet"}
    assert run.jobs["ablate_shard"] == 2  # every shard


def test_target_layer_reruns_ablation_onward_not_training(finished_run: Path, graph):
    run = dry_run(finished_run, {"model": {"target_layer": "features.16"}})
    assert {"ablate_shard", "prune_units"} <= run.params_changed, run.output[-3000:]  # pruning ablates the layer too
    assert run.rules == downstream(graph, {"ablate_shard", "prune_units"})
    assert not run.rules & {"make_demo", "intake_sheet", "finetune_model"}
    assert run.jobs["ablate_shard"] == 2


def test_fusion_option_reruns_fusion_onward(finished_run: Path, graph):
    require_rule(graph, "fuse_scores")
    run = dry_run(finished_run, {"fusion": {"bootstrap": 200}})
    assert "fuse_scores" in run.params_changed, run.output[-3000:]
    assert run.rules == downstream(graph, {"fuse_scores"})
    assert not run.rules & ({"ablate_shard", "finetune_model"} | upstream(graph, "fuse_scores"))


def test_rendering_option_reruns_only_rendering_and_report(finished_run: Path, graph):
    require_rule(graph, "render_heatmaps")
    run = dry_run(finished_run, {"heatmaps": {"alpha": 0.5}})
    assert "render_heatmaps" in run.params_changed, run.output[-3000:]
    # Every rule that reads the option draws or reports, and only they and their consumers rerun.
    assert all(rule.startswith(RENDER_PREFIXES) for rule in run.params_changed), run.params_changed
    assert run.rules == downstream(graph, run.params_changed)
    # The maps themselves (and everything before them) stay.
    assert not run.rules & upstream(graph, "render_heatmaps")
    assert run.jobs["render_heatmaps"] == 2
