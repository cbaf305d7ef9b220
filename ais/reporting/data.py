"""Everything the report summarises, read by the stage into tables and plain values."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import pandas as pd


logger = logging.getLogger(__name__)


@dataclass
class ReportData:
    """The report's inputs as loaded tables (:mod:`ais.stages.build_report` reads them).

    ``scores`` needs the columns ``quadrant`` and ``ais_score`` only;
    ``benchmarks`` is one row per benchmark file (``stage``, ``job``,
    ``seconds``, ``max_rss_mb``); ``gallery`` is the gallery's images by
    group, in the gallery figure's order (``gallery.json``'s ``groups``).
    """

    manifest: pd.DataFrame
    rejected: pd.DataFrame
    metrics: Mapping[str, Any]
    predictions: pd.DataFrame
    scores: pd.DataFrame
    channels: pd.DataFrame
    fusion: Mapping[str, Any]
    agreement: pd.DataFrame
    localization: Mapping[str, Any]
    crops: pd.DataFrame
    benchmarks: pd.DataFrame
    gallery: Mapping[str, list[str]]
    config: Mapping[str, Any] = field(default_factory=dict)
    split_notes: list[str] = field(default_factory=list)  # what intake's split did beyond the sheet
