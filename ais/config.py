"""Load and validate the workflow configuration against the schema ``ais/schemas/config.schema.yaml``.

Validation fills in the schema's defaults and turns every violation into one
message that names the key (``data.splits.train``), what is wrong and what
to do, before any job runs. Text where the schema wants a number, a boolean,
a list or a mapping is read as a YAML value first (:func:`coerce_text`):
Snakemake's ``--config ablation='{shards: 4}'`` delivers nested values as text.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
import os
import re
import tempfile
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


_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def coerce_text(instance: Any, schema: Mapping[str, Any]) -> Any:
    """``instance`` with text the schema does not accept read as YAML where that gives a non-text value.

    Snakemake parses ``--config key=value`` values with a YAML loader that
    keeps every nested scalar as text (``{shards: 4}`` -> ``{"shards": "4"}``,
    ``{augment: false}`` -> ``{"augment": "false"}``). Text that is valid where
    it stands (a file name, ``auto``) is kept; other text becomes the YAML value
    it spells, so that range errors name the real problem (``0 is less than the
    minimum of 1``) rather than the type. Mappings and lists are walked.
    """
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        return {k: coerce_text(v, props[k]) if k in props else v for k, v in instance.items()}
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        return [coerce_text(v, schema["items"]) for v in instance]
    if isinstance(instance, str) and not jsonschema.Draft202012Validator(schema).is_valid(instance):
        try:
            parsed = yaml.safe_load(instance)
        except yaml.YAMLError:
            return instance
        if isinstance(parsed, str) and _NUMBER.fullmatch(parsed.strip()):
            parsed = float(parsed)  # YAML 1.1 reads 1e-3 as text (it wants 1.0e-3)
        if not isinstance(parsed, str):
            return coerce_text(parsed, schema)
    return instance


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
    cfg = coerce_text(copy.deepcopy(dict(config)), schema)
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
    if data["source"] == "demo" and data.get("sheet"):
        raise ConfigError(f"{source}: key 'data.sheet' is set ('{data['sheet']}') but key 'data.source' is 'demo', "
                          "which generates its own images and would ignore the sheet; set data.source: sheet to "
                          "use the sheet, or data.sheet: null to run the demo.")
    if data["source"] == "sheet" and not data.get("sheet"):
        raise ConfigError(f"{source}: key 'data.sheet' is required when data.source is 'sheet'; give the path of a .csv, .tsv or .parquet image sheet.")
    total = sum(data["splits"].values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"{source}: key 'data.splits': fractions sum to {total:g}, not 1; adjust train/val/test.")
    _check_task(cfg, source)
    results = cfg["results"]
    if os.path.isabs(results) or ".." in Path(results).parts:
        raise ConfigError(f"{source}: key 'results': '{results}' must be a relative folder inside the working directory.")


def _check_task(cfg: Mapping[str, Any], source: str) -> None:
    """``model.task`` against the data keys: labels only for classification, its classes, explained class, weights."""
    data, task = cfg["data"], cfg["model"]["task"]
    classes, explained, weights = data.get("classes"), cfg["explain"]["class"], cfg["train"]["class_weights"]
    if task != "classification":
        given = [k for k, v in (("data.label_column", data.get("label_column")), ("data.classes", classes),
                                ("explain.class", explained), ("train.class_weights", weights)) if v is not None]
        if given:
            raise ConfigError(f"{source}: key '{given[0]}' is set but model.task is '{task}', which reads realism "
                              f"scores from data.score_column; set model.task: classification to train on labels, "
                              f"or remove {', '.join(given)}.")
        return
    if not data.get("label_column"):
        raise ConfigError(f"{source}: key 'data.label_column' is required with model.task: classification (the sheet "
                          f"column of class names; data.score_column '{data['score_column']}' holds regression scores).")
    if data["score_column"] != "score":
        raise ConfigError(f"{source}: key 'data.score_column' is set ('{data['score_column']}') but model.task is "
                          f"classification, which reads classes from data.label_column ('{data['label_column']}'); "
                          "remove data.score_column or set model.task: regression.")
    if not classes or len(classes) < 2:
        raise ConfigError(f"{source}: key 'data.classes': classification needs at least two class names in model-output "
                          f"order, e.g. [real, generated]; got {classes}.")
    if explained is not None and explained not in classes:
        raise ConfigError(f"{source}: key 'explain.class': '{explained}' is not one of data.classes "
                          f"({', '.join(classes)}).")
    if isinstance(weights, list) and len(weights) != len(classes):
        raise ConfigError(f"{source}: key 'train.class_weights': {len(weights)} weights for {len(classes)} classes "
                          f"({', '.join(classes)}); give one per class, balanced, or null.")


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
        if sheet.is_file() and data.get("label_column") and data.get("on_bad_image") == "error":
            problems += _label_problems(sheet, data, source)
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
    for key in ("external", "external_fixations"):  # external saliency maps (ais.validity.saliency)
        folder = (cfg.get("heatmaps") or {}).get(key)
        if folder is not None and not (base / str(folder)).is_dir():
            what = "is a file, not a folder" if (base / str(folder)).exists() else "does not exist"
            problems.append(f"{source}: key 'heatmaps.{key}': '{folder}' {what}; give the folder holding one "
                            "<image id>.png or .npy map per image, or null.")
    if problems:
        raise ConfigError("\n".join(problems))


def _label_problems(sheet: Path, data: Mapping[str, Any], source: str) -> list[str]:
    """The sheet's label cells that name no class of ``data.classes`` (read now: nothing has run yet)."""
    from ais.data import SheetError, SheetSpec, label_problems, read_sheet

    try:
        rows = label_problems(read_sheet(sheet), SheetSpec.from_config(data, sheet=str(sheet)))
    except SheetError:
        return []  # unreadable: intake names the problem
    if not rows:
        return []
    return [f"{source}: key 'data.label_column': {sheet}: label cell(s) naming no class:\n" + "\n".join(rows)]


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


def check_target_layer(cfg: Mapping[str, Any], source: str = "config", cache: str | os.PathLike | None = None) -> None:
    """Refuse a ``model.target_layer`` that the architecture lacks or cannot explain, listing the valid ones.

    The model is built as its family builds it (weights none: nothing is read
    or fetched; a meta-device context where the family honours it) and the
    name resolved by ``Family.resolve_layer``, the resolver training, ablation,
    maps and crops use. ``auto`` always resolves and is not built. Importing
    torch and building vgg16 costs seconds, so a name found valid is recorded
    in the JSON file ``cache`` (when given) with the state of the code that
    decides it (:func:`_layer_code_stamp`), and not built again.
    """
    model = cfg["model"]
    name = str(model["target_layer"])
    if name == "auto":
        return
    key = json.dumps([str(model["arch"]), str(model["head"]), str(model["task"]), name, _layer_code_stamp()])
    known = _read_cache(cache)
    if key in known:
        return
    import torch

    from ais.families import family_for
    from ais.models import build_net
    from ais.tasks import get_task

    family = family_for(str(model["arch"]))
    with torch.device("meta"):
        net = build_net(family, str(model["arch"]), str(model["head"]), get_task(str(model["task"])).n_outputs,
                        model.get("mlp"))
    try:
        family.resolve_layer(net, name)
    except ValueError as exc:
        raise ConfigError(f"{source}: key 'model.target_layer': {exc}") from None
    if cache is not None:
        _write_cache(Path(cache), sorted(set(known) | {key}))


def _layer_code_stamp() -> list[Any]:
    """Size and modification time of the modules that decide which layers exist (families, tasks, layers)."""
    package = Path(__file__).parent
    files = sorted([package / "layers.py", *(package / "families").glob("*.py"), *(package / "tasks").glob("*.py")])
    return [[str(f.relative_to(package)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _read_cache(path: str | os.PathLike | None) -> list[str]:
    """The keys in a cache file of :func:`check_target_layer` (none when absent or unreadable)."""
    if path is None:
        return []
    try:
        keys = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []


def _write_cache(path: Path, keys: list[str]) -> None:
    """Write the cache atomically (a temporary file renamed); a cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(keys[-100:], fh)
        os.replace(tmp, path)
    except OSError:
        pass


#: ``ablation.shards: auto`` gives each shard at least this many images: a shard job's start-up
#: (Python, torch, the model) costs 15 to 25 s, so small shards spend their time starting.
IMAGES_PER_SHARD = 64


def auto_shards(n_images: int, workers: int) -> int:
    """``ceil(n_images / IMAGES_PER_SHARD)`` shards, at most ``workers`` and at least 1."""
    return max(1, min(math.ceil(max(n_images, 0) / IMAGES_PER_SHARD), max(int(workers), 1)))


def count_sheet_rows(path: str | os.PathLike) -> int:
    """Data rows of a sheet, cheaply: non-blank lines after the header (CSV/TSV), the row count (Parquet).

    An estimate for sizing shards at parse time (a quoted cell spanning lines
    counts its lines); 0 for a file that cannot be read (intake reports it).
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        with open(path, "rb") as fh:
            return max(sum(1 for line in fh if line.strip()) - 1, 0)
    except Exception:  # noqa: BLE001 - any unreadable sheet: intake names the problem
        return 0


def ablated_images(cfg: Mapping[str, Any], sheet_rows: int | None = None) -> int:
    """The number of images ``ablation.split`` will hold, estimated from the config (and the sheet's rows).

    Demo: ``demo.n_images``, less ``demo.unlabelled_fraction``; sheet: its
    rows. A labelled split takes its ``data.splits`` fraction (also when the
    sheet has a split column: an estimate), ``all`` every image, ``unlabelled``
    the demo's unlabelled fraction or, for a sheet, every row (an upper bound).
    """
    split = cfg["ablation"]["split"]
    demo = cfg["data"]["source"] == "demo"
    n = int(cfg["demo"]["n_images"]) if demo else int(sheet_rows or 0)
    unlabelled = float(cfg["demo"]["unlabelled_fraction"]) if demo else 0.0
    if split == "all":
        return n
    if split == "unlabelled":
        return math.ceil(n * unlabelled) if demo else n
    return math.ceil(n * (1.0 - unlabelled) * float(cfg["data"]["splits"][split]))


def resolve_shards(cfg: Mapping[str, Any], cores: int | None, gpus: int | None, sheet_rows: int | None = None) -> int:
    """``ablation.shards`` as a number: itself, or for ``auto`` :func:`auto_shards` of the ablated images.

    The workers are the GPUs the run has (Snakemake's ``--resources gpu=N``)
    when given, else its cores (``--cores``; 1 when unknown).
    """
    shards = cfg["ablation"]["shards"]
    if shards != "auto":
        return int(shards)
    workers = gpus if gpus else (cores or 1)
    return auto_shards(ablated_images(cfg, sheet_rows), workers)
