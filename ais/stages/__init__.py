"""Stages: one module per Snakemake rule, the only code that reads and writes files.

Each ``ais/stages/<rule>.py`` has one entry verb, ``run(...)``, taking plain
paths and values (what tests call), and ``main(snakemake)``, what the rule's
script in ``workflow_scripts/`` calls: it maps the rule's input, output,
params, wildcards and threads onto ``run`` inside :func:`job`.

What every stage shares lives here: the device choice (:func:`pick_device`),
the provenance stamp (:func:`stamp`: one shape in every Parquet and JSON
output) and the job wrapper (:func:`job`: log file, GPU slot, threads, and
the error written to the rule's own log).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Iterator, Mapping

from ais.errors import UserError

logger = logging.getLogger(__name__)


def pick_device(device: Any = None):
    """``device`` as a ``torch.device``; ``None``: CUDA when available, else the CPU."""
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def stamp(config: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """``{"provenance": {versions, git_revision, config, **extra}}``: what every output carries, one shape.

    Parquet outputs put it in their key-value metadata (beside table-specific
    keys), JSON outputs under the key ``provenance``.
    """
    from ais.provenance import provenance

    return {"provenance": provenance(config, **extra)}


@contextlib.contextmanager
def job(smk: Any, gpu: bool = False) -> Iterator[None]:
    """The frame of a rule's job: logging to the rule's log, a GPU slot (``gpu``), torch's threads.

    Any error is written to the rule's log before the job fails: a
    :class:`ais.errors.UserError` (intake's sheet and row errors, config errors) as its
    message alone with exit code 1, anything else with its traceback. The
    results folder (``config["results"]``) gets a ``.gitignore`` holding ``*``
    (:func:`ais.io.ignore_in_git`), so git never picks up outputs, wherever they go.
    """
    from ais.io import ignore_in_git
    from ais.logs import setup_logging

    log_path = smk.log[0] if len(smk.log) else None
    results = (getattr(smk, "config", None) or {}).get("results")
    if results:
        ignore_in_git(results)
    setup_logging(log_path)
    if gpu:
        from ais.gpu import claim_gpu

        claim_gpu()  # before torch initialises CUDA
    if gpu or "torch" in sys.modules:
        import torch

        torch.set_num_threads(max(1, min(int(smk.threads), torch.get_num_threads())))
    try:
        yield
    except UserError as exc:
        logger.error("%s", exc)
        sys.exit(1)
    except Exception:
        logger.exception("rule %s failed", getattr(smk, "rule", "?"))
        raise
