"""HTML pieces of the report page: numbers, tables, embedded figures, relative links."""

from __future__ import annotations

import base64
import html
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:0.2em} h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:2em}
table{border-collapse:collapse;margin:0.6em 0;font-size:0.9em} th,td{border:1px solid #ddd;padding:0.25em 0.6em;
text-align:right} th{background:#f4f4f4} td.l,th.l{text-align:left}
figure{margin:1em 0} figcaption{font-size:0.85em;color:#555} img{max-width:100%}
code,pre{background:#f6f6f6;font-size:0.85em} pre{padding:0.6em;overflow-x:auto;max-height:24em}
.muted{color:#777} nav a{margin-right:0.8em}
"""


def img(png: bytes, alt: str, caption: str) -> str:
    """A figure with ``png`` embedded as a data URI, so the page needs no other file.

    A :class:`ais.reporting.figures.Preview` brings its MIME type (a JPEG
    preview) and a link to its full-resolution file (``href``).
    """
    mime, href = getattr(png, "mime", "image/png"), getattr(png, "href", None)
    uri = f"data:{mime};base64," + base64.b64encode(png).decode("ascii")
    tag = f'<img src="{uri}" alt="{html.escape(alt)}">'
    more = ""
    if href:
        tag = f'<a href="{html.escape(href)}">{tag}</a>'
        more = f' (<a href="{html.escape(href)}">full resolution</a>)'
    return f"<figure>{tag}<figcaption>{html.escape(caption)}{more}</figcaption></figure>"


def fmt(value: Any, digits: int = 3) -> str:
    """``value`` as escaped text: a dash for missing, yes/no, thousands separators, ``digits`` decimals."""
    if value is None:
        return "&ndash;"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return "&ndash;" if np.isnan(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    """A table of ``rows`` under ``header``; the first ``left`` columns are left-aligned."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{fmt(v)}</td>' for i, v in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def ci(block: Mapping[str, Any]) -> str:
    """A block's ``ci95`` as "lo to hi" (a dash when either end is missing)."""
    bounds = block.get("ci95") or [None, None]
    if bounds[0] is None or bounds[1] is None:
        return "&ndash;"
    return f"{bounds[0]:.3f} to {bounds[1]:.3f}"


def link(target: str, page_dir: Path, text: str | None = None) -> str:
    """A link to ``target`` relative to the page's folder (the page moves with its results folder)."""
    rel = os.path.relpath(Path(target).resolve(), page_dir.resolve())
    return f'<a href="{html.escape(Path(rel).as_posix())}">{html.escape(text or Path(target).name)}</a>'
