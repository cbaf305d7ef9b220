"""Load and validate the workflow configuration against the schema ``ais/schemas/config.schema.yaml``.

Validation fills in the schema's defaults and turns every violation into one
message that names the key (``data.splits.train``), what is wrong and what
to do, before any job runs.
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

from ais.errors import UserError

#: The schema, package data of :mod:`ais` (``schemas/config.schema.yaml`` at the top links to it).
CONFIG_SCHEMA = resources.files("ais") / "schemas" / "config.schema.yaml"


class ConfigError(UserError):
    """The configuration does not match its schema."""


def load_schema(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The config schema (a fresh copy): the package's own, or the one at ``path``."""
    if path is None:
        return copy.deepcopy(_package_schema())
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@functools.lru_cache(maxsize=1)
def _package_schema() -> dict[str, Any]:
    return yaml.safe_load(CONFIG_SCHEMA.read_text(encoding="utf-8"))


def config_section(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Section ``name`` (``model``, ``train``, ...) with the schema's defaults filled in; unknown keys refused.

    For callers that get one section rather than a validated config (tests,
    library use): the same defaults :func:`validate_config` fills in.
    """
    props = _package_schema()["properties"][name]["properties"]
    unknown = sorted(set(given) - set(props))
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(props)}")
    out = {key: copy.deepcopy(given[key]) for key in given}
    _fill_defaults(out, _package_schema()["properties"][name])
    return out


def _fill_defaults(instance: Any, schema: Mapping[str, Any]) -> None:
    """Recursively insert the schema's defaults for missing object keys (in place)."""
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub)


def _key_name(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _describe(error: jsonschema.ValidationError, source: str) -> str:
    key = _key_name(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        parts = []
        for name in extra:
            full = f"{key}.{name}" if key != "(top level)" else name
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            parts.append(f"{source}: unknown key '{full}'.{hint} Allowed here: {', '.join(allowed)}.")
        return "\n".join(parts)
    description = error.schema.get("description", "") if isinstance(error.schema, dict) else ""
    hint = f" ({description})" if description else ""
    return f"{source}: key '{key}': {error.message}.{hint}"


def validate_config(
    config: Mapping[str, Any], schema: Mapping[str, Any] | None = None, source: str = "config"
) -> dict[str, Any]:
    """Return a validated deep copy of ``config`` with defaults filled in.

    Raises :class:`ConfigError` listing every problem, each naming its key.
    """
    schema = load_schema() if schema is None else schema
    cfg = copy.deepcopy(dict(config))
    _fill_defaults(cfg, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("\n".join(_describe(e, source) for e in errors))
    _check_semantics(cfg, source)
    return cfg


def _check_semantics(cfg: Mapping[str, Any], source: str) -> None:
    """Rules a JSON Schema cannot say."""
    data = cfg["data"]
    if data["source"] == "sheet" and not data.get("sheet"):
        raise ConfigError(f"{source}: key 'data.sheet' is required when data.source is 'sheet'; give the path of a .csv, .tsv or .parquet image sheet.")
    total = sum(data["splits"].values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"{source}: key 'data.splits': fractions sum to {total:g}, not 1; adjust train/val/test.")
    results = cfg["results"]
    if os.path.isabs(results) or ".." in Path(results).parts:
        raise ConfigError(f"{source}: key 'results': '{results}' must be a relative folder inside the working directory.")


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def check_paths(cfg: Mapping[str, Any], source: str = "config", base: str | os.PathLike = ".") -> None:
    """Check that the files and folders a validated config names exist, naming the key if not.

    Relative paths are relative to ``base`` (the working directory). Checked:
    ``data.sheet`` (an existing file) and ``data.root`` (an existing folder)
    when ``data.source`` is ``sheet``; ``model.weights`` unless it is ``none``
    or one of torchvision's weights names for ``model.arch`` (then an existing
    ``.safetensors``/``.pt``/``.pth``/``.bin`` file).
    """
    base = Path(base)
    problems: list[str] = []
    data = cfg["data"]
    if data["source"] == "sheet":
        sheet = base / str(data["sheet"])
        if not sheet.is_file():
            what = "is a folder, not a file" if sheet.is_dir() else "does not exist"
            problems.append(f"{source}: key 'data.sheet': '{data['sheet']}' {what}; give the path of the "
                            ".csv, .tsv or .parquet image sheet (relative paths start at the working directory).")
        if data.get("root") is not None:
            root = base / str(data["root"])
            if not root.is_dir():
                what = "is a file, not a folder" if root.exists() else "does not exist"
                problems.append(f"{source}: key 'data.root': '{data['root']}' {what}; give the folder the sheet's "
                                "image paths are relative to, or null for the sheet's own folder.")
    model = cfg.get("model", {})
    weights = str(model.get("weights", "none"))
    if weights != "none":
        path = base / Path(weights).expanduser()
        if path.is_file():
            if path.suffix.lower() not in WEIGHT_SUFFIXES:
                problems.append(f"{source}: key 'model.weights': '{weights}' is not a .safetensors, .pt or .pth "
                                "state dict file.")
        elif weights not in _torchvision_weight_names(str(model.get("arch", "vgg16"))):
            problems.append(
                f"{source}: key 'model.weights': '{weights}' is neither 'none', a torchvision weights name for "
                f"{model.get('arch')} ({', '.join(_torchvision_weight_names(str(model.get('arch', 'vgg16'))))}), "
                "nor an existing .safetensors, .pt or .pth file."
            )
    if problems:
        raise ConfigError("\n".join(problems))


def _torchvision_weight_names(arch: str) -> list[str]:
    """The pretrained weights names ``arch``'s family can fetch (imported only when needed: parsing stays fast)."""
    from ais.families import family_for

    try:
        return family_for(arch).weight_names(arch)
    except ValueError:
        return []


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys to values.")
    return validate_config(raw, source=str(path))
