"""Rule ``make_demo``: write the offline synthetic realism data set (:mod:`ais.demo`).

Under the output folder: ``images/demo-0000.png`` ..., ``masks/demo-0000.png``
..., ``sheet.csv`` (an ordinary image sheet: ``path``, ``score``, ``mask``,
``label``: ``generated`` when the image carries a generator artefact, ``real``
otherwise; :func:`ais.demo.label_of`) and ``demo.json`` (parameters, artefact types, regions per image). Same
parameters, same bytes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ais import demo
from ais.io import write_bytes, write_json, write_text
from ais.stages import job

logger = logging.getLogger(__name__)


def run(out_dir: str | os.PathLike, **demo_params: Any) -> Path:
    """Write the data set of parameters ``demo_params`` (:class:`ais.demo.DemoParams`) under ``out_dir``.

    Returns the path of ``sheet.csv``.

    Images are written as they are generated, so memory does not grow with ``n_images``.
    """
    params = demo.DemoParams(**demo_params)
    out = Path(out_dir)
    rows, records = [], []
    for entry in demo.demo_entries(params):
        write_bytes(out / entry.path, demo.png_bytes(entry.demo.image))
        write_bytes(out / entry.mask_path, demo.png_bytes(entry.demo.mask))
        rows.append(entry.sheet_row())
        records.append(entry.record())
    sheet = out / "sheet.csv"
    write_text(sheet, demo.sheet_csv(rows))
    write_json(out / "demo.json", demo.describe(params, records))
    n_unlabelled = sum(record["score"] is None for record in records)
    n_generated = sum(record["label"] == "generated" for record in records)
    logger.info("demo: %d images (%d unlabelled; labelled %d generated, %d real) of %d px written to %s",
                params.n_images, n_unlabelled, n_generated, params.n_images - n_unlabelled - n_generated,
                params.size, out)
    return sheet


def main(smk: Any) -> None:
    """The rule's job: the data set in the folder of ``output.sheet``, parameters ``params.demo``."""
    with job(smk):
        run(Path(smk.output.sheet).parent, **smk.params.demo)
