"""Image-sheet intake: read the user's sheet, check every row and image, split, write the manifest.

The sheet is a CSV, TSV or Parquet table with one row per image: a path
column (relative to ``data.root``), a score column (empty = unlabelled), and
optionally an id column and a split column. Every problem is reported with
the sheet's file name, the row number (1-based data row, as a spreadsheet
shows it minus the header) and the column.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from ais import io
from ais.images import BadImageError, DEFAULT_MAX_PIXELS, open_image
from ais.tables import MANIFEST_SCHEMA

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_ID_LENGTH = 120  # derived ids and file stems; far below the 255-byte limit of file names


def _is_missing(value: Any) -> bool:
    """An empty cell: None, pandas' NA, or a float NaN coming from a text column."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


class SheetError(ValueError):
    """The image sheet as a whole cannot be used (missing columns, empty, unreadable)."""


class BadRowsError(ValueError):
    """Some rows of the sheet are bad and ``data.on_bad_image`` is ``error``."""

    def __init__(self, sheet: str, rejected: pd.DataFrame) -> None:
        self.rejected = rejected
        super().__init__(
            f"{sheet}: {len(rejected)} bad row(s); fix or remove them, or set data.on_bad_image: skip "
            "to drop them (they are then listed in results/data/rejected.csv):\n" + describe_rows(rejected)
        )


def describe_rows(rejected: pd.DataFrame) -> str:
    """One line per rejected row: ``  row 3 (path) img/a.jpg: file not found``."""
    return "\n".join(
        f"  row {rec.sheet_row} ({rec.column}) {rec.path}: {rec.reason}" for rec in rejected.itertuples(index=False)
    )


@dataclass(frozen=True)
class SheetSpec:
    """Where to find things in a sheet (the ``data`` section of the config)."""

    sheet: str
    root: str | None = None
    image_column: str = "path"
    score_column: str = "score"
    id_column: str | None = None
    split_column: str | None = None
    mask_column: str | None = None

    @classmethod
    def from_config(cls, data: Mapping[str, Any], **overrides: Any) -> "SheetSpec":
        keys = ("sheet", "root", "image_column", "score_column", "id_column", "split_column")
        values = {k: data.get(k) for k in keys if data.get(k) is not None}
        values.update(overrides)
        return cls(**values)


def read_sheet(path: str | os.PathLike) -> pd.DataFrame:
    """Read a .csv, .tsv or .parquet sheet with every column as text (Parquet keeps its types).

    The index is the 0-based data row in the file: blank lines of a CSV/TSV
    carry no data and are left out, but still count, so that row numbers in
    messages match the file. Parquet is read with Arrow types, so a null
    score (unlabelled) stays apart from a NaN one (rejected) and integer ids
    stay integers. A UTF-8 byte-order mark (Excel's "CSV UTF-8") is ignored.
    """
    path = Path(path)
    if not path.exists():
        raise SheetError(f"{path}: image sheet not found; set data.sheet to an existing .csv, .tsv or .parquet file.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path, dtype_backend="pyarrow").reset_index(drop=True)  # rows, not a stored index
        elif suffix in (".csv", ".tsv", ".txt"):
            sep = "\t" if suffix in (".tsv", ".txt") else ","
            df = pd.read_csv(
                path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig", skip_blank_lines=False
            ).fillna("")  # a short row's missing cells are empty cells
            df = df[~df.apply(lambda col: col.str.strip() == "").all(axis=1)]
        else:
            raise SheetError(f"{path}: unknown sheet format '{suffix}'; use .csv, .tsv or .parquet.")
    except SheetError:
        raise
    except pd.errors.EmptyDataError:
        raise SheetError(f"{path}: the sheet is empty; it needs a header row and one row per image.") from None
    except (UnicodeDecodeError, pd.errors.ParserError, OSError, ValueError) as exc:
        raise SheetError(f"{path}: cannot be read as a sheet ({type(exc).__name__}: {exc}).") from exc
    if len(df) == 0:
        raise SheetError(f"{path}: the sheet has a header but no rows; add one row per image.")
    return df


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _cap(name: str, original: str) -> str:
    """``name`` cut to :data:`MAX_ID_LENGTH` characters, a hash of ``original`` keeping it unique."""
    if len(name) <= MAX_ID_LENGTH:
        return name
    return f"{name[:MAX_ID_LENGTH - 10].rstrip('._')}__{_short_hash(original)}"


def derive_image_id(rel_path: str) -> str:
    """An image id from a relative path: ``a/b/c.jpg`` -> ``a__b__c``.

    Characters outside ``[A-Za-z0-9._-]`` are replaced by ``_``; when that
    changes the name, a short hash of the original path is appended so that
    ids stay unique (``café.jpg`` -> ``caf__3f2a9c1e``). Ids longer than
    :data:`MAX_ID_LENGTH` characters are cut and get the hash too. The result
    is always a safe file name (see :func:`file_stem`).
    """
    stem = os.path.splitext(rel_path.replace("\\", "/"))[0]
    parts = [p for p in stem.split("/") if p not in ("", ".")]
    raw = "__".join(parts)
    safe = _SAFE.sub("_", unicodedata.normalize("NFC", raw)).lstrip("._-").rstrip("._") or "image"
    if safe != raw:
        safe = f"{safe}__{_short_hash(rel_path)}"
    return _cap(safe, rel_path)


def file_stem(image_id: str) -> str:
    """A file name stem for ``image_id`` that cannot leave its folder (used for per-image outputs).

    Only ``[A-Za-z0-9._-]``, starting with a letter or digit (never empty,
    hidden, ``..`` or an option-like ``-x``), at most :data:`MAX_ID_LENGTH`
    characters; a short hash of the id is appended whenever the id had to be
    changed, so different ids give different stems.
    """
    safe = _SAFE.sub("_", image_id).lstrip("._-").rstrip("._")
    if safe != image_id or not safe:
        safe = f"{safe or 'image'}__{_short_hash(image_id)}"
    return _cap(safe, image_id)


def _parse_score(value: Any) -> tuple[float | None, str | None]:
    """Return (score, None), (None, None) for an empty cell, or (None, reason).

    Text cells come from CSV/TSV (empty text = unlabelled). A numeric NaN can
    only come from a Parquet float column (nulls arrive as ``None``) and is
    rejected like the text ``nan``.
    """
    if value is None or value is pd.NA:
        return None, None
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return None, None
        try:
            number = float(text)
        except ValueError:
            return None, f"score {value!r} is not a number (leave the cell empty for an unlabelled image)"
    elif isinstance(value, bool):
        return None, f"score {value!r} is a boolean, not a number"
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None, f"score {value!r} is not a number"
    if not math.isfinite(number):
        return None, f"score {value!r} is not finite (leave the cell empty for an unlabelled image)"
    return number, None


def _resolve_path(root: Path, rel: str) -> tuple[str | None, str | None]:
    """Join ``rel`` to ``root``; refuse absolute paths and paths that leave the root.

    "Leaving" is judged on the real path: ``../`` and symbolic links (of the
    file or of a folder on the way) that point outside the root are refused.
    When the file is missing but the other Unicode normalisation of its name
    exists (NFC vs NFD: sheets written on macOS), that one is used.
    """
    if _is_missing(rel) or str(rel).strip() == "":
        return None, "empty image path"
    rel = str(rel).strip()
    if "\x00" in rel:
        return None, "image path contains a NUL character"
    if os.path.isabs(rel):
        return None, "absolute image path; paths must be relative to data.root"
    joined = os.path.normpath(os.path.join(str(root), rel))
    if not os.path.lexists(joined):
        for form in ("NFC", "NFD"):
            other = unicodedata.normalize(form, joined)
            if other != joined and os.path.lexists(other):
                joined = other
                break
    root_abs = os.path.realpath(root)
    real = os.path.realpath(joined)
    if os.path.commonpath([root_abs, real]) != root_abs:
        how = " through a symbolic link" if os.path.commonpath([os.path.abspath(root), os.path.abspath(joined)]) \
            == os.path.abspath(root) else ""
        return None, (f"path leaves data.root{how}: it resolves to {real}, outside {root}; move the image "
                      "under the root or change data.root")
    return joined, None


def seeded_split(image_ids: list[str], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """Assign train/val/test deterministically: ids sorted, permuted by ``seed``, cut by ``fractions``.

    The counts are the largest-remainder rounding of ``fractions * n``, so they always add up to n.
    """
    ids = sorted(image_ids)
    n = len(ids)
    order = np.random.default_rng(seed).permutation(n)
    exact = np.array([fractions.get(s, 0.0) * n for s in SPLIT_NAMES])
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    labels = np.repeat(np.array(SPLIT_NAMES), counts)
    return {ids[j]: str(labels[k]) for k, j in enumerate(order)}


def build_manifest(
    spec: SheetSpec,
    splits: Mapping[str, float],
    seed: int,
    on_bad_image: str = "error",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every row of the sheet and return ``(manifest, rejected)``.

    ``manifest`` follows :data:`ais.tables.MANIFEST_SCHEMA`; ``rejected`` has
    columns ``sheet_row, column, path, reason``. With ``on_bad_image="error"``
    any rejected row raises :class:`BadRowsError` listing them all.
    """
    sheet = read_sheet(spec.sheet)
    name = str(spec.sheet)
    needed = [spec.image_column, spec.score_column] + [
        c for c in (spec.id_column, spec.split_column, spec.mask_column) if c
    ]
    missing = [c for c in needed if c not in sheet.columns]
    if missing:
        raise SheetError(
            f"{name}: missing column(s) {', '.join(repr(c) for c in missing)}; the sheet has "
            f"{', '.join(repr(str(c)) for c in sheet.columns)}. Rename them or set data.image_column / "
            "data.score_column / data.id_column / data.split_column."
        )
    root = Path(spec.root) if spec.root else Path(spec.sheet).parent

    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    seen_ids: dict[str, int] = {}

    def reject(row: int, column: str, path: Any, reason: str) -> None:
        rejected.append({"sheet_row": row, "column": column, "path": "" if path is None else str(path), "reason": reason})

    records = sheet.to_dict("records")
    n = len(records)
    last_row = int(sheet.index[-1]) + 1
    for i, rec in zip(sheet.index, records):
        row = int(i) + 1
        rel = rec[spec.image_column]
        path, why = _resolve_path(root, rel)
        if why:
            reject(row, spec.image_column, rel, why)
            continue
        score, why = _parse_score(rec[spec.score_column])
        if why:
            reject(row, spec.score_column, rel, why)
            continue
        if spec.id_column:
            raw_id = rec[spec.id_column]
            image_id = "" if _is_missing(raw_id) else str(raw_id).strip()
            if image_id == "":
                reject(row, spec.id_column, rel, "empty image id")
                continue
            if _CONTROL.search(image_id):
                reject(row, spec.id_column, rel, f"image id {image_id!r} contains a control character")
                continue
        else:
            image_id = derive_image_id(str(rel).strip())
        if image_id in seen_ids:
            hint = "" if spec.id_column else (
                "; ids are derived from the paths (a/b.jpg -> a__b): give unique ids in a column named by "
                "data.id_column if different files map to the same id")
            reject(row, spec.id_column or spec.image_column, rel,
                   f"duplicate image id '{image_id}' (first on row {seen_ids[image_id]}); each image must appear "
                   f"once{hint}")
            continue
        split = None
        if spec.split_column:
            value = rec[spec.split_column]
            text = "" if _is_missing(value) else str(value).strip().lower()
            if score is None:
                if text not in ("", "unlabelled", "unlabeled"):
                    reject(row, spec.split_column, rel, f"split '{value}' given for an image without a score; "
                           "unlabelled images cannot be trained or tested on: leave the split empty or give a score")
                    continue
            elif text not in SPLIT_NAMES:
                reject(row, spec.split_column, rel, f"split '{value}' is not one of train, val, test")
                continue
            else:
                split = text
        try:
            im = open_image(path, max_pixels=max_pixels)
        except BadImageError as exc:
            reject(row, spec.image_column, rel, str(exc).removeprefix(f"{path}: "))
            continue
        width, height = im.size
        seen_ids[image_id] = row
        mask = None
        if spec.mask_column:
            mval = rec[spec.mask_column]
            if not _is_missing(mval) and str(mval).strip() != "":
                mask, why = _resolve_path(root, str(mval))
                if why:
                    reject(row, spec.mask_column, mval, why)
                    del seen_ids[image_id]
                    continue
        rows.append({
            "image_id": image_id, "path": path, "y_true": score, "split": split,
            "width": width, "height": height, "sheet_row": row, "mask": mask,
        })
        if row % 500 == 0 or row == last_row:
            log.info("intake: %d/%d rows checked, %d rejected", len(rows) + len(rejected), n, len(rejected))

    rejected_df = pd.DataFrame(rejected, columns=["sheet_row", "column", "path", "reason"])
    if len(rejected_df) and on_bad_image == "error":
        raise BadRowsError(name, rejected_df)
    if not rows:
        raise SheetError(f"{name}: no usable rows; every row was rejected:\n{describe_rows(rejected_df)}")

    manifest = pd.DataFrame(rows)
    labelled = manifest["y_true"].notna()
    manifest.loc[~labelled, "split"] = "unlabelled"
    if not spec.split_column:
        assignment = seeded_split(manifest.loc[labelled, "image_id"].tolist(), splits, seed)
        manifest.loc[labelled, "split"] = manifest.loc[labelled, "image_id"].map(assignment)
    manifest = manifest.sort_values("image_id", kind="stable").reset_index(drop=True)
    return manifest, rejected_df


def write_manifest(
    manifest: pd.DataFrame, rejected: pd.DataFrame, manifest_path: str | os.PathLike,
    rejected_path: str | os.PathLike, metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write the manifest (Parquet, :data:`MANIFEST_SCHEMA`) and rejected rows (CSV), atomically."""
    table = pa.Table.from_pandas(manifest, preserve_index=False)
    counts = manifest["split"].value_counts().to_dict()
    meta = dict(metadata or {})
    meta["counts"] = {k: int(v) for k, v in sorted(counts.items())}
    meta["rejected"] = int(len(rejected))
    io.write_table(manifest_path, table, schema=MANIFEST_SCHEMA, metadata=meta)
    with io.atomic_path(rejected_path) as tmp:
        rejected.to_csv(tmp, index=False)


def run_intake(
    data_cfg: Mapping[str, Any], seed: int, manifest_path: str | os.PathLike, rejected_path: str | os.PathLike,
    sheet: str | None = None, mask_column: str | None = None, metadata: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Intake as the workflow runs it: config ``data`` section in, manifest and rejected.csv out.

    ``sheet`` overrides ``data.sheet`` (the demo passes its generated sheet).
    """
    overrides: dict[str, Any] = {}
    if sheet is not None:
        overrides.update(sheet=sheet, root=None, image_column="path", score_column="score",
                         id_column=None, split_column=None)
    if mask_column:
        overrides["mask_column"] = mask_column
    spec = SheetSpec.from_config(data_cfg, **overrides)
    manifest, rejected = build_manifest(
        spec, data_cfg["splits"], seed, data_cfg["on_bad_image"], data_cfg.get("max_image_pixels", DEFAULT_MAX_PIXELS)
    )
    if len(rejected):
        log.warning("intake: %d row(s) rejected, listed in %s", len(rejected), rejected_path)
    log.info("intake: %d images, splits %s", len(manifest), manifest["split"].value_counts().to_dict())
    write_manifest(manifest, rejected, manifest_path, rejected_path, metadata)
    return manifest


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read the manifest written by :func:`write_manifest`."""
    return pd.read_parquet(path)


def select_split(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of ``split`` (``all`` keeps every row), ordered by image id."""
    rows = manifest if split == "all" else manifest[manifest["split"] == split]
    return rows.sort_values("image_id", kind="stable").reset_index(drop=True)


def shard_rows(manifest: pd.DataFrame, split: str, n_shards: int, shard: int) -> pd.DataFrame:
    """The images of shard ``shard`` (0-based) of ``n_shards``: contiguous, near-equal blocks by image id.

    Every selected image is in exactly one shard; a shard may be empty when
    there are fewer images than shards.
    """
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} out of range for {n_shards} shards")
    rows = select_split(manifest, split)
    bounds = np.linspace(0, len(rows), n_shards + 1).round().astype(int)
    return rows.iloc[bounds[shard]: bounds[shard + 1]].reset_index(drop=True)
