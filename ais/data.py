"""Image-sheet intake: read the user's sheet, check every row and image, split; read the manifest back.

The sheet is a CSV, TSV or Parquet table with one row per image: a path
column (relative to ``data.root``), a score column (empty = unlabelled) or,
for classification, a label column (a class name of ``data.classes`` or its
0-based index; empty = unlabelled), and optionally an id, a split and a group
column. Classification splits are stratified (the seeded split per class). Every problem is reported with
the sheet's file name, the row number (1-based data row, as a spreadsheet
shows it minus the header) and the column. Writing the manifest is the
stage's (:mod:`ais.stages.intake_sheet`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import posixpath
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ais.errors import UserError
from ais.images import DEFAULT_MAX_PIXELS, BadImageError, open_image
from ais.tables import LABELLED_SPLITS, SPLITS

logger = logging.getLogger(__name__)

_UNLABELLED = SPLITS[-1]  # the split of rows without a score
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: A score as text: plain decimal notation only (sign, ASCII digits, one point, exponent). Python's
#: ``float()`` also takes ``4_5`` (= 45), full-width or other Unicode digits and ``nan``/``inf``.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
MAX_ID_LENGTH = 120  # derived ids and file stems; far below the 255-byte limit of file names


def _is_missing(value: Any) -> bool:
    """An empty cell: None, pandas' NA, or a float NaN coming from a text column."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


class SheetError(UserError):
    """The image sheet as a whole cannot be used (missing columns, empty, unreadable)."""


class BadRowsError(UserError):
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
    label_column: str | None = None  # classification: class names (or indices into classes) replace scores
    classes: tuple[str, ...] | None = None
    group_column: str | None = None

    @classmethod
    def from_config(cls, data: Mapping[str, Any], **overrides: Any) -> "SheetSpec":
        keys = ("sheet", "root", "image_column", "score_column", "id_column", "split_column", "label_column",
                "group_column")
        values = {k: data.get(k) for k in keys if data.get(k) is not None}
        if data.get("classes") is not None:
            values["classes"] = tuple(str(c) for c in data["classes"])
        values.update(overrides)
        return cls(**values)

    @property
    def target_column(self) -> str:
        """The column with each image's truth: the label column (classification) or the score column."""
        return self.label_column or self.score_column


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
    changed, so different ids give different stems. An id with an upper-case
    letter gets the hash too (``Cat`` -> ``Cat__<hash>``, ``cat`` -> ``cat``):
    ids that differ only by case then give stems that differ also on
    case-insensitive file systems (macOS, Windows).
    """
    safe = _SAFE.sub("_", image_id).lstrip("._-").rstrip("._")
    if safe != image_id or not safe or safe != safe.lower():
        safe = f"{safe or 'image'}__{_short_hash(image_id)}"
    return _cap(safe, image_id)


def _parse_score(value: Any) -> tuple[float | None, str | None]:
    """Return (score, None), (None, None) for an empty cell, or (None, reason).

    Text cells come from CSV/TSV (empty text = unlabelled) and must be plain
    decimal notation (:data:`_DECIMAL`: ``4.5``, ``-3``, ``.5``, ``1e-3``):
    ``4_5``, full-width digits and other text Python's ``float()`` takes are
    refused. A numeric NaN can only come from a Parquet float column (nulls
    arrive as ``None``) and is rejected like the text ``nan``.
    """
    if value is None or value is pd.NA:
        return None, None
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return None, None
        if not _DECIMAL.fullmatch(text):
            return None, _text_score_reason(value, text)
        number = float(text)
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


def parse_label(value: Any, classes: tuple[str, ...]) -> tuple[float | None, str | None]:
    """Return (class index, None), (None, None) for an empty cell, or (None, reason).

    A cell is a class name of ``classes`` (exact, surrounding blanks ignored) or, when it names no class,
    a 0-based index into them (``0``, ``1``; a Parquet integer). Anything else is refused, listing the classes.
    """
    if _is_missing(value):
        return None, None
    text = str(value).strip()
    if text == "":
        return None, None
    if text in classes:
        return float(classes.index(text)), None
    if not isinstance(value, bool) and re.fullmatch(r"[0-9]+", text) and int(text) < len(classes):
        return float(int(text)), None
    return None, (f"class {value!r} is not one of data.classes ({', '.join(classes)}) nor an index 0..{len(classes) - 1}; "
                  "fix the cell, add the class to data.classes, or leave it empty for an unlabelled image")


def label_problems(sheet: pd.DataFrame, spec: "SheetSpec", limit: int = 20) -> list[str]:
    """``row N (column): reason`` for each label cell :func:`parse_label` refuses (at most ``limit`` lines)."""
    if not spec.label_column or spec.label_column not in sheet.columns or not spec.classes:
        return []
    out = []
    for i, value in zip(sheet.index, sheet[spec.label_column]):
        why = parse_label(value, spec.classes)[1]
        if why:
            out.append(f"  row {int(i) + 1} ({spec.label_column}): {why}")
    return out[:limit] + ([f"  ... and {len(out) - limit} more"] if len(out) > limit else [])


def _text_score_reason(value: str, text: str) -> str:
    """Why a text score that is not plain decimal notation is refused."""
    try:
        special = not math.isfinite(float(text))
    except ValueError:
        special = False
    if special:
        return f"score {value!r} is not finite (leave the cell empty for an unlabelled image)"
    return (f"score {value!r} is not a number in plain decimal notation (an optional sign, ASCII digits, "
            "one decimal point, an optional exponent: 4.5, -3, 1e-3); leave the cell empty for an unlabelled image")


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
    exact = np.array([fractions.get(s, 0.0) * n for s in LABELLED_SPLITS])
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    labels = np.repeat(np.array(LABELLED_SPLITS), counts)
    return {ids[j]: str(labels[k]) for k, j in enumerate(order)}


@dataclass(frozen=True)
class _RowCheck:
    """What checking one row needs: the sheet's columns, the image root, the pixel limit, the ids kept so far."""

    spec: SheetSpec
    root: Path
    max_pixels: int
    seen_ids: dict[str, int]  # image id -> the sheet row that has it (accepted rows only)
    seen_files: dict[tuple[int, int], int]  # (device, inode) of the file -> the sheet row that has it
    common_folders: int = 0  # leading folders every path shares, left out of derived ids


class _Rejected(Exception):
    """One row is bad: the column to blame, the cell shown (``path``) and the reason."""

    def __init__(self, column: str, path: Any, reason: str) -> None:
        super().__init__(reason)
        self.column, self.path, self.reason = column, "" if path is None else str(path), reason


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
    any rejected row raises :class:`BadRowsError` listing them all. What the
    split assignment did beyond the sheet's own values (blank split cells
    assigned, a validation part carved out of ``train``) is in
    ``manifest.attrs["split_notes"]`` (a list of sentences).
    """
    sheet = read_sheet(spec.sheet)
    _check_columns(sheet, spec)
    root = Path(spec.root) if spec.root else Path(spec.sheet).parent
    common = 0 if spec.id_column else len(common_folders(sheet[spec.image_column]))
    rows, rejected = _check_rows(sheet, _RowCheck(spec, root, max_pixels, {}, {}, common))
    _refuse_bad_rows(str(spec.sheet), rows, rejected, on_bad_image)
    manifest = _assign_splits(pd.DataFrame(rows), spec, splits, seed)
    return manifest, rejected


def _norm_rel(rel: str) -> str:
    """A sheet path normalised as a relative POSIX path: ``imgs/sub/../a.png`` -> ``imgs/a.png``."""
    return posixpath.normpath(rel.strip().replace("\\", "/"))


def common_folders(paths: pd.Series) -> list[str]:
    """The leading folders that every non-empty path of ``paths`` shares (never a file name, never ``..``).

    Derived ids leave them out: ``dataset/images/test/f351.png`` alone in its
    folders gives the id ``f351``, not ``dataset__images__test__f351``.
    """
    common: list[str] | None = None
    for value in paths:
        if _is_missing(value) or str(value).strip() == "":
            continue
        folders = _norm_rel(str(value)).split("/")[:-1]
        if common is None:
            common = folders
        else:
            n = 0
            while n < min(len(common), len(folders)) and common[n] == folders[n]:
                n += 1
            common = common[:n]
        if not common:
            return []
    common = common or []
    stop = next((i for i, part in enumerate(common) if part in ("", ".", "..")), len(common))
    return common[:stop]


def _check_columns(sheet: pd.DataFrame, spec: SheetSpec) -> None:
    """Refuse a sheet that lacks a column the spec names."""
    needed = [spec.image_column, spec.target_column] + [
        c for c in (spec.id_column, spec.split_column, spec.mask_column, spec.group_column) if c
    ]
    missing = [c for c in needed if c not in sheet.columns]
    if missing:
        raise SheetError(
            f"{spec.sheet}: missing column(s) {', '.join(repr(c) for c in missing)}; the sheet has "
            f"{', '.join(repr(str(c)) for c in sheet.columns)}. Rename them or set data.image_column / "
            "data.score_column / data.label_column / data.id_column / data.split_column / data.group_column."
        )


def _check_rows(sheet: pd.DataFrame, check: _RowCheck) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Every row checked in sheet order: ``(manifest rows, rejected rows)``, progress logged."""
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    records = sheet.to_dict("records")
    last_row = int(sheet.index[-1]) + 1
    for i, rec in zip(sheet.index, records):
        row = int(i) + 1
        try:
            rows.append(_check_row(rec, row, check))
        except _Rejected as bad:
            rejected.append({"sheet_row": row, "column": bad.column, "path": bad.path, "reason": bad.reason})
        if row % 500 == 0 or row == last_row:
            logger.info("intake: %d/%d rows checked, %d rejected", len(rows) + len(rejected), len(records),
                        len(rejected))
    return rows, pd.DataFrame(rejected, columns=["sheet_row", "column", "path", "reason"])


def _check_row(rec: Mapping[str, Any], row: int, check: _RowCheck) -> dict[str, Any]:
    """One manifest row from sheet row ``row``, or :class:`_Rejected` for its first problem."""
    spec = check.spec
    rel = rec[spec.image_column]
    path = _checked(_resolve_path(check.root, rel), spec.image_column, rel)
    if spec.label_column:
        score = _checked(parse_label(rec[spec.label_column], spec.classes or ()), spec.label_column, rel)
    else:
        score = _checked(_parse_score(rec[spec.score_column]), spec.score_column, rel)
    image_id = _row_id(rec, rel, check)
    split = _row_split(rec, rel, score, spec)
    try:
        width, height = open_image(path, max_pixels=check.max_pixels).size
    except BadImageError as exc:
        raise _Rejected(spec.image_column, rel, str(exc).removeprefix(f"{path}: ")) from None
    file_key = _same_file_check(path, rel, check)
    mask = _row_mask(rec, check)
    check.seen_ids[image_id] = row
    check.seen_files[file_key] = row
    return {
        "image_id": image_id, "path": path, "y_true": score, "split": split,
        "width": width, "height": height, "sheet_row": row, "mask": mask,
        "label": None if score is None or not spec.label_column else spec.classes[int(score)],
        "group": _row_group(rec, spec),
    }


def _row_group(rec: Mapping[str, Any], spec: SheetSpec) -> str | None:
    """The group column's text (``None`` without the column or for an empty cell)."""
    if not spec.group_column or _is_missing(rec[spec.group_column]):
        return None
    return str(rec[spec.group_column]).strip() or None


def _checked(result: tuple[Any, str | None], column: str, path: Any) -> Any:
    """The value of a ``(value, reason)`` check, or :class:`_Rejected` when there is a reason."""
    value, why = result
    if why:
        raise _Rejected(column, path, why)
    return value


def _same_file_check(path: str, rel: Any, check: _RowCheck) -> tuple[int, int]:
    """The file's identity (device, inode); :class:`_Rejected` when an accepted row has the same file.

    Catches one file under two paths (``imgs/sub/../a.png`` and ``imgs/a.png``,
    a symbolic or hard link inside the root, another case on a case-insensitive
    file system), which would otherwise be two images and could be in train and test at once.
    """
    st = os.stat(path)
    key = (int(st.st_dev), int(st.st_ino)) if st.st_ino else (0, hash(os.path.normcase(os.path.realpath(path))))
    if key in check.seen_files:
        raise _Rejected(check.spec.image_column, rel,
                        f"same file as row {check.seen_files[key]} (it resolves to {os.path.realpath(path)}); "
                        "each image must appear once: remove one of the rows")
    return key


def _row_id(rec: Mapping[str, Any], rel: Any, check: _RowCheck) -> str:
    """The row's image id (the id column's, else derived from the path), refused when empty, odd or seen."""
    spec = check.spec
    if spec.id_column:
        raw_id = rec[spec.id_column]
        image_id = "" if _is_missing(raw_id) else str(raw_id).strip()
        if image_id == "":
            raise _Rejected(spec.id_column, rel, "empty image id")
        if _CONTROL.search(image_id):
            raise _Rejected(spec.id_column, rel, f"image id {image_id!r} contains a control character")
    else:
        parts = _norm_rel(str(rel)).split("/")
        image_id = derive_image_id("/".join(parts[check.common_folders:]))
    if image_id in check.seen_ids:
        hint = "" if spec.id_column else (
            "; ids are derived from the paths (a/b.jpg -> a__b, folders shared by every row left out): give "
            "unique ids in a column named by data.id_column if different files map to the same id")
        raise _Rejected(spec.id_column or spec.image_column, rel,
                        f"duplicate image id '{image_id}' (first on row {check.seen_ids[image_id]}); each image "
                        f"must appear once{hint}")
    return image_id


def _row_split(rec: Mapping[str, Any], rel: Any, score: float | None, spec: SheetSpec) -> str | None:
    """The split column's value (``None`` without one, for an unlabelled image, or a blank cell: "assign me")."""
    if not spec.split_column:
        return None
    value = rec[spec.split_column]
    text = "" if _is_missing(value) else str(value).strip().lower()
    if score is None:
        if text not in ("", _UNLABELLED, "unlabeled"):
            raise _Rejected(spec.split_column, rel, f"split '{value}' given for an image without a score; "
                            "unlabelled images cannot be trained or tested on: leave the split empty or give a score")
        return None
    if text == "":
        return None  # assigned by the seeded split (_assign_splits)
    if text not in LABELLED_SPLITS:
        raise _Rejected(spec.split_column, rel, f"split '{value}' is not one of {', '.join(LABELLED_SPLITS)}")
    return text


def _row_mask(rec: Mapping[str, Any], check: _RowCheck) -> str | None:
    """The row's mask file under the root (``None`` without a mask column or for an empty cell)."""
    column = check.spec.mask_column
    if not column:
        return None
    value = rec[column]
    if _is_missing(value) or str(value).strip() == "":
        return None
    return _checked(_resolve_path(check.root, str(value)), column, value)


def _refuse_bad_rows(name: str, rows: list[dict[str, Any]], rejected: pd.DataFrame, on_bad_image: str) -> None:
    """Raise when bad rows must stop intake (``on_bad_image="error"``) or no row is usable."""
    if len(rejected) and on_bad_image == "error":
        raise BadRowsError(name, rejected)
    if not rows:
        raise SheetError(f"{name}: no usable rows; every row was rejected:\n{describe_rows(rejected)}")


def _assign_splits(manifest: pd.DataFrame, spec: SheetSpec, splits: Mapping[str, float], seed: int) -> pd.DataFrame:
    """Unlabelled rows get ``unlabelled``, labelled rows without a split a seeded one; sorted by id.

    Without a split column every labelled row is "without a split". With one,
    blank cells are assigned by ``splits``, and when no row is ``val`` a
    seeded validation part is carved out of ``train`` (:func:`carve_val`).
    What was done beyond the sheet's values is in ``attrs["split_notes"]``.
    """
    labelled = manifest["y_true"].notna()
    manifest.loc[~labelled, "split"] = _UNLABELLED
    blank = labelled & manifest["split"].isna()
    notes: list[str] = []
    if blank.any():
        assignment = _seeded_assignment(manifest.loc[blank], splits, seed, stratified=bool(spec.label_column))
        manifest.loc[blank, "split"] = manifest.loc[blank, "image_id"].map(assignment)
        if spec.split_column:
            notes.append(f"{int(blank.sum())} labelled row(s) with an empty '{spec.split_column}' cell were "
                         "assigned by the seeded split (data.splits)")
    if spec.split_column:
        notes += carve_val(manifest, splits["val"], seed)
    out = manifest.sort_values("image_id", kind="stable").reset_index(drop=True)
    if spec.label_column:
        check_classes_in_train(out, spec.classes or (), str(spec.sheet))
    out.attrs["split_notes"] = notes
    return out


def _seeded_assignment(rows: pd.DataFrame, splits: Mapping[str, float], seed: int, stratified: bool) -> dict[str, str]:
    """:func:`seeded_split` of the rows' ids; ``stratified``: of each class's ids apart (by ``y_true``)."""
    if not stratified:
        return seeded_split(rows["image_id"].tolist(), splits, seed)
    out: dict[str, str] = {}
    for _, part in rows.groupby("y_true", sort=True):
        out.update(seeded_split(part["image_id"].tolist(), splits, seed))
    return out


def check_classes_in_train(manifest: pd.DataFrame, classes: tuple[str, ...], source: str) -> None:
    """Refuse a split whose ``train`` part lacks a class (the model could never learn it), with the counts."""
    y, split = manifest["y_true"], manifest["split"]
    missing = [c for k, c in enumerate(classes) if not ((y == k) & (split == "train")).any()]
    if missing:
        counts = "; ".join(f"{c}: " + ", ".join(f"{s} {int(((y == k) & (split == s)).sum())}" for s in LABELLED_SPLITS)
                           for k, c in enumerate(classes))
        raise SheetError(f"{source}: class(es) {', '.join(repr(c) for c in missing)} have no labelled train image; "
                         f"every class of data.classes needs training images (per class: {counts}). Label more "
                         "images of that class, change the split column, or remove the class from data.classes.")


def carve_val(manifest: pd.DataFrame, val_fraction: float, seed: int) -> list[str]:
    """Without any ``val`` row, make ``val`` a seeded part of the ``train`` rows (in place); the notes.

    Published data sets often ship only train and test. The part has
    ``round(val_fraction * labelled images)`` rows (at least 1, leaving at
    least 2 for training); ids sorted then permuted by ``seed``, as
    :func:`seeded_split`. Nothing is carved when ``val_fraction`` is 0 or
    there are fewer than 3 train rows.
    """
    split = manifest["split"]
    if (split == "val").any() or val_fraction <= 0:
        return []
    train_ids = sorted(manifest.loc[split == "train", "image_id"])
    n_labelled = int(split.isin(LABELLED_SPLITS).sum())
    k = min(max(1, round(val_fraction * n_labelled)), len(train_ids) - 2)
    if k < 1:
        return []
    order = np.random.default_rng(seed).permutation(len(train_ids))[:k]
    chosen = {train_ids[j] for j in order}
    manifest.loc[manifest["image_id"].isin(chosen), "split"] = "val"
    return [f"the split column has no val rows: {k} of the {len(train_ids)} train rows became val (seeded, "
            f"data.splits.val = {val_fraction:g} of the {n_labelled} labelled images) for model selection"]


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read the manifest (written by :mod:`ais.stages.intake_sheet`) and check its columns and split values.

    Raises ``ValueError`` naming ``path`` when a column the workflow needs
    (``image_id``, ``path``, ``y_true``, ``split``) is missing or a split is
    not one of :data:`ais.tables.SPLITS`.
    """
    df = pd.read_parquet(path)
    missing = [c for c in ("image_id", "path", "y_true", "split") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise ValueError(f"{path}: unknown split value(s) {bad}; expected {', '.join(SPLITS)}")
    return df.reset_index(drop=True)


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
