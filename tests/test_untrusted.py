"""Untrusted files: nothing unpickles without weights_only=True, ids cannot name files outside results/,
config paths are checked before anything runs."""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import pyarrow
import pytest
import torch
import yaml

from ais.config import ConfigError, check_paths, validate_config
from ais.data import MAX_ID_LENGTH, derive_image_id, file_stem
from conftest import REPO, run_snakemake

SOURCES = sorted(
    p for folder in ("ais", "workflow_scripts", "benchmarks") for p in (REPO / folder).rglob("*.py")
) + [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]


# ---------------------------------------------------------------------------
# Deserialisation


def unsafe_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """Calls that could execute code from a file: unpickling, or torch.load without weights_only=True."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        kwargs = {k.arg: k.value for k in node.keywords}
        if name.endswith("torch.load") or name == "load" and "weights_only" in kwargs:
            value = kwargs.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                found.append((node.lineno, f"{name} without weights_only=True"))
        elif re.search(r"(^|\.)(pickle|cPickle|dill|cloudpickle|joblib|marshal|shelve)\.(load|loads|open|Unpickler)$",
                       name) or name in ("read_pickle", "pd.read_pickle", "pandas.read_pickle"):
            found.append((node.lineno, name))
        elif name.endswith("jit.load"):
            found.append((node.lineno, f"{name} (TorchScript runs code)"))
        elif name.endswith(("np.load", "numpy.load")):
            value = kwargs.get("allow_pickle")
            if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                found.append((node.lineno, f"{name} with allow_pickle"))
        elif name in ("eval", "exec") or name.endswith("yaml.load") and "Loader" in kwargs \
                and "Safe" not in ast.unparse(kwargs["Loader"]):
            found.append((node.lineno, name))
    return found


def test_no_code_path_unpickles_a_file():
    problems = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py":
            problems += [f"{path.relative_to(REPO)}:{line}: {what}" for line, what in unsafe_calls(ast.parse(text))]
        else:  # Snakefile and rules: their Python is not plain Python; a textual check
            problems += [f"{path.relative_to(REPO)}: {m}" for m in re.findall(r"torch\.load|pickle|allow_pickle=True", text)]
    assert problems == []


def test_the_scanner_finds_what_it_looks_for():
    bad = ast.parse(
        "torch.load(p)\ntorch.load(p, weights_only=False)\npickle.loads(b)\nnp.load(p, allow_pickle=True)\n"
        "pd.read_pickle(p)\ntorch.jit.load(p)\nyaml.load(t, Loader=yaml.Loader)\n"
    )
    assert len(unsafe_calls(bad)) == 7
    good = ast.parse("torch.load(p, weights_only=True)\nnp.load(p)\nnp.load(p, allow_pickle=False)\n"
                     "yaml.safe_load(t)\nyaml.load(t, Loader=yaml.SafeLoader)\n")
    assert unsafe_calls(good) == []


def test_pyarrow_does_not_unpickle_extension_types():
    """pyarrow < 14 unpickled 'arrow.py_extension_type' metadata of any Parquet file read (CVE-2023-47248)."""
    assert int(pyarrow.__version__.split(".")[0]) >= 14


class _Payload:
    """Unpickling this creates a marker file: a stand-in for code smuggled into a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_planted_resume_state_is_never_unpickled(tmp_path, caplog):
    """A resume state.pt replaced by a pickle that runs code: refused, training starts over."""
    from ais.training import _load_resume

    marker = tmp_path / "pwned"
    (tmp_path / "resume").mkdir()
    torch.save({"format": "ais-train-resume-v1", "evil": _Payload(marker)}, tmp_path / "resume" / "state.pt")
    with caplog.at_level(logging.WARNING):
        assert _load_resume(tmp_path / "resume", "hash") is None  # logs to the ais.training logger
    assert not marker.exists()
    assert "unreadable" in caplog.text and "starting over" in caplog.text


# ---------------------------------------------------------------------------
# Names derived from image ids


EVIL_IDS = ["../../x", "/abs", "a/../../b", "..", ".", "", "...", ".hidden", "a\x00b", "x" * 1000,
            "é" * 300, "a/b\\c", "CON", "-rf", "a\nb", "../" * 50 + "etc/passwd"]


@pytest.mark.parametrize("make", [file_stem, derive_image_id], ids=["file_stem", "derive_image_id"])
def test_names_from_ids_stay_inside_their_folder(make, tmp_path):
    results = tmp_path / "results" / "heatmaps"
    results.mkdir(parents=True)
    stems = [make(i) for i in EVIL_IDS]
    for evil, stem in zip(EVIL_IDS, stems):
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", stem), (evil, stem)
        assert len(stem) <= MAX_ID_LENGTH and stem not in (".", "..")
        target = results / f"{stem}.png"
        assert target.resolve().parent == results.resolve()
        target.write_bytes(b"")  # a legal file name on this file system
    assert len(set(stems)) == len(stems)  # different ids, different files


def test_safe_ids_are_kept_and_long_ones_are_cut_uniquely():
    assert file_stem("img_001.a-b") == "img_001.a-b"
    assert derive_image_id("sub/img_001.jpg") == "sub__img_001"
    a, b = derive_image_id("d/" + "x" * 300 + "1.png"), derive_image_id("d/" + "x" * 300 + "2.png")
    assert a != b and len(a) == len(b) == MAX_ID_LENGTH


# ---------------------------------------------------------------------------
# Config paths


def sheet_cfg(**data) -> dict:
    return validate_config({"data": {"source": "sheet", **data}})


def test_config_paths_are_checked(tmp_path):
    (tmp_path / "sheet.csv").write_text("path,score\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "w.safetensors").write_bytes(b"")
    (tmp_path / "w.txt").write_bytes(b"")
    check_paths(sheet_cfg(sheet="sheet.csv", root="images"), base=tmp_path)
    check_paths(validate_config({"model": {"weights": str(tmp_path / "w.safetensors")}}), base=tmp_path)
    check_paths(validate_config({"model": {"arch": "vgg16", "weights": "IMAGENET1K_V1"}}), base=tmp_path)
    with pytest.raises(ConfigError, match=r"key 'data.sheet' is set \('nope.csv'\) but key 'data.source' is 'demo'"):
        validate_config({"data": {"sheet": "nope.csv"}})  # demo would ignore the sheet: refused (issue 18)

    with pytest.raises(ConfigError, match=r"key 'data.sheet': 'nope.csv' does not exist"):
        check_paths(sheet_cfg(sheet="nope.csv"), base=tmp_path)
    with pytest.raises(ConfigError, match=r"key 'data.sheet': 'images' is a folder, not a file"):
        check_paths(sheet_cfg(sheet="images"), base=tmp_path)
    with pytest.raises(ConfigError, match=r"key 'data.root': 'gone' does not exist"):
        check_paths(sheet_cfg(sheet="sheet.csv", root="gone"), base=tmp_path)
    with pytest.raises(ConfigError, match=r"key 'data.root': 'sheet.csv' is a file, not a folder"):
        check_paths(sheet_cfg(sheet="sheet.csv", root="sheet.csv"), base=tmp_path)
    with pytest.raises(ConfigError, match=r"key 'model.weights': 'missing.pt' is neither 'none', a torchvision "
                                          r"weights name for vgg16 \(IMAGENET1K_V1.*nor an existing"):
        check_paths(validate_config({"model": {"weights": "missing.pt"}}), base=tmp_path)
    with pytest.raises(ConfigError, match=r"key 'model.weights': '.*w.txt' is not a .safetensors"):
        check_paths(validate_config({"model": {"weights": str(tmp_path / "w.txt")}}), base=tmp_path)
    # All problems at once.
    with pytest.raises(ConfigError) as err:
        check_paths(validate_config({"data": {"source": "sheet", "sheet": "a.csv", "root": "b"},
                                     "model": {"weights": "c.pth"}}), base=tmp_path)
    assert [line.split("'")[1] for line in str(err.value).splitlines()] == ["data.sheet", "data.root", "model.weights"]


def test_workflow_checks_config_paths_before_running(tmp_path):
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())
    cfg["data"] = {"source": "sheet", "sheet": "missing/sheet.csv", "root": "missing/images"}
    cfg["model"]["weights"] = "weights/missing.safetensors"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(tmp_path, "--cores", "1", "--configfile", str(tmp_path / "config.yaml"), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Invalid configuration (nothing was run)" in out
    for key in ("data.sheet", "data.root", "model.weights"):
        assert f"key '{key}'" in out, out[-3000:]
    assert not (tmp_path / "results").exists()
