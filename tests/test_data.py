"""Intake of a user's image sheet: explicit and seeded splits, errors naming row and column."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ais.data import (
    BadRowsError, SheetError, SheetSpec, build_manifest, derive_image_id, file_stem, read_manifest, seeded_split,
)
from ais.io import read_metadata
from ais.stages import intake_sheet
from ais.tables import MANIFEST_SCHEMA
from conftest import write_image

SPLITS = {"train": 0.5, "val": 0.25, "test": 0.25}


def make_sheet(tmp_path: Path, rows: list[dict], name: str = "sheet.csv") -> Path:
    sheet = tmp_path / name
    df = pd.DataFrame(rows)
    if name.endswith(".parquet"):
        df.to_parquet(sheet)
    else:
        df.to_csv(sheet, index=False, sep="\t" if name.endswith(".tsv") else ",")
    return sheet


def test_explicit_split_sheet(tmp_path: Path):
    rows = []
    for i, split in enumerate(["train", "train", "val", "test", ""]):
        write_image(tmp_path / "img" / f"a{i}.png", size=(10 + i, 8), seed=i)
        rows.append({"file": f"img/a{i}.png", "realism": "" if split == "" else str(1.5 + i), "part": split})
    sheet = make_sheet(tmp_path, rows)
    spec = SheetSpec(sheet=str(sheet), image_column="file", score_column="realism", split_column="part")
    manifest, rejected = build_manifest(spec, SPLITS, seed=0)
    assert rejected.empty
    assert list(manifest.columns) == MANIFEST_SCHEMA.names
    assert manifest["image_id"].tolist() == [f"a{i}" for i in range(5)]  # the folder all rows share is left out
    assert manifest["split"].tolist() == ["train", "train", "val", "test", "unlabelled"]
    assert manifest["y_true"].tolist()[:4] == [1.5, 2.5, 3.5, 4.5]
    assert pd.isna(manifest["y_true"].iloc[4])
    assert manifest["width"].tolist() == [10, 11, 12, 13, 14] and set(manifest["height"]) == {8}
    assert manifest["path"].iloc[0] == str(tmp_path / "img" / "a0.png")
    assert manifest["sheet_row"].tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("fmt", ["sheet.csv", "sheet.tsv", "sheet.parquet"])
def test_seeded_split_is_deterministic_and_proportional(tmp_path: Path, fmt: str):
    rows = []
    for i in range(20):
        write_image(tmp_path / f"im{i:02d}.png", seed=i)
        rows.append({"path": f"im{i:02d}.png", "score": float(i) if fmt.endswith("parquet") else str(i)})
    sheet = make_sheet(tmp_path, rows, fmt)
    spec = SheetSpec(sheet=str(sheet))
    m1, _ = build_manifest(spec, SPLITS, seed=7)
    m2, _ = build_manifest(spec, SPLITS, seed=7)
    m3, _ = build_manifest(spec, SPLITS, seed=8)
    assert m1.equals(m2)
    assert m1["split"].value_counts().to_dict() == {"train": 10, "val": 5, "test": 5}
    assert not m1["split"].equals(m3["split"])


def test_seeded_split_counts_add_up():
    ids = [f"x{i}" for i in range(7)]
    got = seeded_split(ids, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    counts = pd.Series(got).value_counts().to_dict()
    assert sum(counts.values()) == 7 and counts["train"] == 5
    # Independent of the order the ids come in.
    assert seeded_split(list(reversed(ids)), {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0) == got


def test_bad_rows_are_named_all_at_once(tmp_path: Path):
    write_image(tmp_path / "ok.png")
    write_image(tmp_path / "ok2.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    rows = [
        {"path": "ok.png", "score": "3"},
        {"path": "missing.png", "score": "2"},
        {"path": "empty.png", "score": "2"},
        {"path": "text.jpg", "score": "2"},
        {"path": "ok2.png", "score": "abc"},
        {"path": "ok2.png", "score": "inf"},
        {"path": "../outside.png", "score": "1"},
        {"path": "ok.png", "score": "4"},
    ]
    sheet = make_sheet(tmp_path, rows)
    with pytest.raises(BadRowsError) as err:
        build_manifest(SheetSpec(sheet=str(sheet)), SPLITS, seed=0)
    msg = str(err.value)
    for row, needle in [(2, "file not found"), (3, "empty"), (4, "cannot be read"), (5, "not a number"),
                        (6, "not finite"), (7, "leaves data.root"), (8, "duplicate image id 'ok' (first on row 1)")]:
        assert f"row {row} " in msg and needle in msg, (row, needle, msg)
    manifest, rejected = build_manifest(SheetSpec(sheet=str(sheet)), SPLITS, seed=0, on_bad_image="skip")
    assert manifest["image_id"].tolist() == ["ok"]
    assert rejected["sheet_row"].tolist() == [2, 3, 4, 5, 6, 7, 8]
    assert rejected.loc[rejected.sheet_row == 5, "column"].item() == "score"


def test_sheet_level_errors(tmp_path: Path):
    with pytest.raises(SheetError, match="not found"):
        build_manifest(SheetSpec(sheet=str(tmp_path / "nope.csv")), SPLITS, 0)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SheetError, match="empty"):
        build_manifest(SheetSpec(sheet=str(tmp_path / "empty.csv")), SPLITS, 0)
    (tmp_path / "header.csv").write_text("path,score\n")
    with pytest.raises(SheetError, match="no rows"):
        build_manifest(SheetSpec(sheet=str(tmp_path / "header.csv")), SPLITS, 0)
    (tmp_path / "cols.csv").write_text("file,score\na.png,1\n")
    with pytest.raises(SheetError, match="missing column.*'path'.*the sheet has 'file', 'score'"):
        build_manifest(SheetSpec(sheet=str(tmp_path / "cols.csv")), SPLITS, 0)


def test_split_column_values_checked(tmp_path: Path):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    sheet = make_sheet(tmp_path, [{"path": "a.png", "score": "1", "s": "training"},
                                  {"path": "b.png", "score": "", "s": "test"}])
    with pytest.raises(BadRowsError) as err:
        build_manifest(SheetSpec(sheet=str(sheet), split_column="s"), SPLITS, 0)
    assert "row 1 (s)" in str(err.value) and "not one of train, val, test" in str(err.value)
    assert "row 2 (s)" in str(err.value) and "without a score" in str(err.value)


def test_ids_are_safe_file_names():
    assert derive_image_id("a/b/c.jpg") == "a__b__c"
    odd = derive_image_id("café/photo 1.jpg")
    assert odd.startswith("caf_") and "/" not in odd and odd.isascii()
    assert derive_image_id("café.jpg") != derive_image_id("cafè.jpg")
    for evil in ["../../etc/passwd", "/abs", "..", "a/../b", ""]:
        stem = file_stem(evil)
        assert "/" not in stem and stem not in ("", ".", "..")


def test_intake_stage_writes_manifest_and_rejected(tmp_path: Path):
    write_image(tmp_path / "a.png")
    sheet = make_sheet(tmp_path, [{"path": "a.png", "score": "2"}, {"path": "gone.png", "score": "2"}])
    data = {"sheet": str(sheet), "root": None, "image_column": "path", "score_column": "score",
            "id_column": None, "split_column": None, "splits": {"train": 1.0, "val": 0.0, "test": 0.0},
            "on_bad_image": "skip"}
    intake_sheet.run(data, 0, tmp_path / "out" / "manifest.parquet", tmp_path / "out" / "rejected.csv",
                     config={"seed": 0})
    table = pq.read_table(tmp_path / "out" / "manifest.parquet")
    assert table.schema.remove_metadata().equals(MANIFEST_SCHEMA)
    meta = read_metadata(tmp_path / "out" / "manifest.parquet")
    assert meta["counts"] == {"train": 1} and meta["rejected"] == 1 and meta["provenance"]["config"] == {"seed": 0}
    assert set(meta) >= {"provenance", "counts", "rejected"} and "versions" in meta["provenance"]
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv")
    assert rejected["path"].tolist() == ["gone.png"] and "not found" in rejected["reason"].item()


def test_intake_stage_stamps_data_and_seed_by_default(tmp_path: Path):
    write_image(tmp_path / "a.png")
    sheet = make_sheet(tmp_path, [{"path": "a.png", "score": "2"}])
    data = {"sheet": str(sheet), "splits": {"train": 1.0, "val": 0.0, "test": 0.0}, "on_bad_image": "error"}
    manifest = intake_sheet.run(data, 5, tmp_path / "m.parquet", tmp_path / "r.csv")
    meta = read_metadata(tmp_path / "m.parquet")
    assert meta["provenance"]["config"] == {"data": data, "seed": 5} and meta["rejected"] == 0
    back = read_manifest(tmp_path / "m.parquet")
    cols = ["image_id", "path", "y_true", "split"]
    assert back[cols].to_dict("records") == manifest[cols].to_dict("records")


def test_intake_errors_are_user_errors():
    from ais.errors import UserError

    assert issubclass(SheetError, UserError) and issubclass(BadRowsError, UserError)


def test_read_manifest_checks_columns_and_splits(tmp_path: Path):
    good = {"image_id": ["a"], "path": ["a.png"], "y_true": [1.0], "split": ["train"]}
    pd.DataFrame(good).to_parquet(tmp_path / "ok.parquet")
    assert read_manifest(tmp_path / "ok.parquet")["image_id"].tolist() == ["a"]
    pd.DataFrame({k: v for k, v in good.items() if k != "y_true"}).to_parquet(tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match=r"cols.parquet: manifest lacks column\(s\) y_true"):
        read_manifest(tmp_path / "cols.parquet")
    pd.DataFrame({**good, "split": ["training"]}).to_parquet(tmp_path / "split.parquet")
    with pytest.raises(ValueError, match=r"split.parquet: unknown split value\(s\) \['training'\]"):
        read_manifest(tmp_path / "split.parquet")


def test_shards_partition_the_split():
    from ais.data import shard_rows

    manifest = pd.DataFrame({"image_id": [f"i{k:02d}" for k in range(10)],
                             "split": ["test", "train"] * 5})
    shards = [shard_rows(manifest, "test", 3, s) for s in range(3)]
    assert [len(s) for s in shards] == [2, 1, 2]
    assert sum((s["image_id"].tolist() for s in shards), []) == ["i00", "i02", "i04", "i06", "i08"]
    assert sum(len(shard_rows(manifest, "all", 4, s)) for s in range(4)) == 10
    assert len(shard_rows(manifest, "test", 8, 7)) == 1 and len(shard_rows(manifest, "test", 8, 1)) == 0
    with pytest.raises(ValueError):
        shard_rows(manifest, "test", 3, 3)


MAIN_SCRIPT = """
import sys
from types import SimpleNamespace as NS
from ais.stages import intake_sheet, make_demo
out = sys.argv[1]
data = {"splits": {"train": 0.5, "val": 0.25, "test": 0.25}, "on_bad_image": sys.argv[2], "sheet": out + "/bad.csv"}
make_demo.main(NS(output=NS(sheet=out + "/demo/sheet.csv"), params=NS(demo={"n_images": 4, "size": 16}),
                  log=[out + "/demo.log"], threads=1, rule="make_demo"))
intake_sheet.main(NS(input=NS(sheet=out + "/demo/sheet.csv"), output=NS(manifest=out + "/m.parquet",
                     rejected=out + "/r.csv"), params=NS(data=data, seed=1, demo=sys.argv[3] == "demo"),
                     log=[out + "/intake.log"], threads=1, rule="intake_sheet"))
"""


def test_stage_mains_map_the_rules_onto_run(tmp_path: Path):
    """make_demo then intake_sheet as the rules call them: the demo's sheet and masks; a user error exits 1."""
    import subprocess
    import sys

    (tmp_path / "bad.csv").write_text("path,score\nnope.png,1\n")
    ok = subprocess.run([sys.executable, "-c", MAIN_SCRIPT, str(tmp_path), "error", "demo"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    manifest = read_manifest(tmp_path / "m.parquet")
    assert len(manifest) == 4 and manifest["mask"].str.endswith(".png").all()
    assert read_metadata(tmp_path / "m.parquet")["provenance"]["config"]["seed"] == 1
    bad = subprocess.run([sys.executable, "-c", MAIN_SCRIPT, str(tmp_path), "error", "sheet"],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    log = (tmp_path / "intake.log").read_text()
    assert "bad.csv: 1 bad row(s)" in log and "row 1 (path) nope.png: file not found" in log
    assert "Traceback" not in log
