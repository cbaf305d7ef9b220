"""Config validation: defaults filled, every violation names its key, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ais.config import CONFIG_SCHEMA, ConfigError, load_config, load_schema, validate_config
from conftest import REPO, run_snakemake


def test_repo_config_is_valid_and_defaults_are_filled():
    cfg = load_config(REPO / "config.yaml")
    assert cfg["data"]["source"] == "demo"
    # A key absent from config.yaml gets the schema default.
    assert validate_config({})["model"]["target_layer"] == "features.28"
    assert validate_config({})["model"]["arch"] == "vgg16"


def test_misspelt_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as err:
        validate_config({"data": {"sourc": "demo"}})
    msg = str(err.value)
    assert "data.sourc" in msg and "Did you mean 'source'" in msg


def test_wrong_type_and_enum_name_the_key():
    with pytest.raises(ConfigError, match=r"demo\.n_images"):
        validate_config({"demo": {"n_images": "many"}})
    with pytest.raises(ConfigError, match=r"model\.arch"):
        validate_config({"model": {"arch": "alexnet"}})


def test_semantic_checks():
    with pytest.raises(ConfigError, match=r"data\.sheet"):
        validate_config({"data": {"source": "sheet"}})
    with pytest.raises(ConfigError, match=r"data\.splits"):
        validate_config({"data": {"splits": {"train": 0.5, "val": 0.1, "test": 0.1}}})
    with pytest.raises(ConfigError, match="results"):
        validate_config({"results": "../elsewhere"})


def test_heatmap_views_are_checked():
    assert validate_config({})["heatmaps"]["views"][:2] == ["ais", "direction"]
    with pytest.raises(ConfigError, match=r"heatmaps\.views"):
        validate_config({"heatmaps": {"views": ["ais", "gradcam++"]}})
    from ais.views import list_views

    schema = load_schema()
    assert schema["properties"]["heatmaps"]["properties"]["views"]["items"]["enum"] == list_views()


def test_schema_enums_match_the_registries():
    from ais.families import list_archs
    from ais.methods import list_methods
    from ais.tasks import list_tasks
    from ais.views import list_views

    model = load_schema()["properties"]["model"]["properties"]
    assert model["arch"]["enum"] == list_archs()
    assert model["task"]["enum"] == list_tasks()
    assert model["task"]["default"] == "regression" and validate_config({})["model"]["task"] == "regression"
    with pytest.raises(ConfigError, match=r"model\.task"):
        validate_config({"model": {"task": "segmentation"}})
    # every registered map method can be drawn: a view of the same name exists
    assert set(list_methods()) <= set(list_views()), sorted(set(list_methods()) - set(list_views()))


def test_schema_is_package_data():
    assert CONFIG_SCHEMA.is_file()
    assert load_schema() == yaml.safe_load(CONFIG_SCHEMA.read_text(encoding="utf-8"))
    assert load_schema() is not load_schema()  # a fresh copy each time


def test_every_schema_property_has_a_description_and_closed_objects():
    schema = load_schema()

    def walk(node, where):
        if node.get("type") == "object" or "properties" in node:
            assert node.get("additionalProperties") is False, where
            for key, sub in node.get("properties", {}).items():
                assert sub.get("description"), f"{where}.{key} has no description"
                walk(sub, f"{where}.{key}")

    walk(schema, "config")


def test_config_yaml_comments_every_key():
    """config.yaml says what each key does: every line that sets a key carries a comment or heads a section."""
    for n, line in enumerate((REPO / "config.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        assert "#" in line or stripped.endswith(":"), f"config.yaml line {n} has no comment: {line}"


def test_workflow_rejects_bad_key_before_running(tmp_path: Path):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["model"]["target_layr"] = "auto"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(tmp_path / "config.yaml"), check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "model.target_layr" in out and "Did you mean 'target_layer'" in out
    assert not (tmp_path / "results").exists()
