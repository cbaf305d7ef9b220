"""Benchmark: the heatmap browser with a generated 100,000-row table in headless Chromium.

Writes ``browser.html`` and ``browser-data.js`` for ``--rows`` synthetic
explained images (the columns of a real run: split, true, predicted,
|error|, MC std, agreement, localisation, scales, faithfulness gains,
top channels) with :mod:`ais.reporting.browser`, opens the page from disk
(``file://``) and measures, median of ``--repeat``:

- ``load_ms``: navigation start to the first page of rows on screen (the
  page's ``AIS_TIMINGS.ready_ms``: the data file parsed, every column
  typed, the default order, the first page drawn);
- ``sort_ms``: one click on the |error| header to the next frame (sort
  of every row, filter, redraw of the page); ``sort_text_ms`` by image id;
- ``filter_ms``: choosing a split in the filter to the next frame;
- ``search_ms``: typing a part of an id to the next frame (the page waits
  120 ms after the last key on tables this large: not counted).

The reference, measured in the same run on ``--reference-rows`` rows (20,000:
at 100,000 it holds GBs of memory): the obvious page, every row an HTML
``<tr>`` in the file (8 columns only) sorted by moving the rows (``sort`` on
the rows' values, then ``appendChild``), as sortable-table scripts do, against
ours on the same rows; ``load_speedup`` and ``sort_speedup`` are its times
over ours. Prints one JSON line last (ours at ``--rows`` first, on stderr).

    .venv/bin/python benchmarks/browser.py --rows 100000
"""

from __future__ import annotations

import argparse
import html
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from browser import Browser, find_chromium  # noqa: E402

from ais.reporting import browser as B  # noqa: E402

NEXT_FRAME = "new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)))"


def synthetic(n: int, seed: int = 0) -> tuple[pd.DataFrame, dict[str, list[list[float]]]]:
    """``n`` rows like a real run's merged per-image table, and each image's top channels."""
    rng = np.random.default_rng(seed)
    y_true = rng.uniform(1, 5, n)
    y_pred = np.clip(y_true + rng.normal(0, 0.6, n), 1, 5)
    table = pd.DataFrame({
        "image_id": [f"photos__batch-{i % 40:02d}__img-{i:06d}" for i in range(n)],
        "shard": (np.arange(n) % 8).astype(np.int32),
        "split": np.array(["train", "val", "test", "unlabelled"])[rng.integers(0, 4, n)],
        "file_stem": [f"photos__batch-{i % 40:02d}__img-{i:06d}" for i in range(n)],
        "weights": "image", "y_true": y_true, "y_pred": y_pred, "abs_error": np.abs(y_pred - y_true),
        "mc_std": rng.gamma(2.0, 0.1, n),
    })
    for name in ("ais_scale", "direction_scale", "gradcam_scale"):
        table[name] = rng.gamma(2.0, 1.0, n)
    for ref in ("gradcam", "gradcampp", "saliency"):
        table[f"cc_{ref}"], table[f"sim_{ref}"], table[f"kld_{ref}"] = (
            rng.uniform(-1, 1, n), rng.uniform(0, 1, n), rng.gamma(1.0, 0.01, n))
    for name in ("ais_pos_auc", "ais_neg_auc", "gradcam_auc"):
        table[name] = rng.uniform(0, 1, n)
    for method in ("ais", "gradcam"):
        table[f"faith_deletion_gain_{method}_pos"] = rng.normal(0, 0.1, n)
    channels = rng.integers(0, 512, (n, 6))
    scores = np.sort(rng.normal(0, 2, (n, 6)), axis=1)[:, ::-1]
    top = {i: [[int(c), float(s), 0.001] for c, s in zip(cs, ss)] for i, cs, ss in
           zip(table["image_id"], channels.tolist(), scores.round(3).tolist())}
    return table, top


def write_ours(folder: Path, table: pd.DataFrame, top: dict) -> Path:
    dirs = {s: f"../heatmaps/shard-{s}/panels/" for s in range(8)}
    thumbs = {s: f"browser/thumbs/shard-{s}/" for s in range(8)}
    data = B.browser_data(table, dirs, thumbs, top, B.view_legend())
    (folder / "browser-data.js").write_text(B.encode_data(data), encoding="utf-8")
    page = folder / "browser.html"
    page.write_text(B.browser_page("benchmark"), encoding="utf-8")
    return page


def write_naive(folder: Path, table: pd.DataFrame) -> Path:
    """Every row an HTML row; a click on a header sorts by moving the rows (the reference)."""
    cols = ["image_id", "split", "y_true", "y_pred", "abs_error", "mc_std", "cc_gradcam", "cc_gradcampp"]
    head = "".join(f'<th data-key="{c}">{c}</th>' for c in cols)
    rows = []
    for rec in table[cols].itertuples(index=False):
        cells = "".join(f"<td>{html.escape(v) if isinstance(v, str) else f'{v:.4g}'}</td>" for v in rec)
        rows.append(f"<tr>{cells}</tr>")
    script = """
const tbody = document.querySelector('tbody');
document.querySelectorAll('th').forEach((th, k) => th.addEventListener('click', () => {
  const rows = Array.from(tbody.rows);
  const num = k >= 2;
  const key = rows.map(r => num ? parseFloat(r.cells[k].textContent) : r.cells[k].textContent);
  const idx = rows.map((_, i) => i).sort((a, b) => key[a] < key[b] ? 1 : key[a] > key[b] ? -1 : a - b);
  for (const i of idx) tbody.appendChild(rows[i]);
}));
window.AIS_TIMINGS = {ready_ms: performance.now()};
"""
    page = folder / "naive.html"
    page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body><table><thead><tr>{head}</tr>"
                    f"</thead><tbody>{''.join(rows)}</tbody></table><script>{script}</script></body></html>",
                    encoding="utf-8")
    return page


def timed(b: Browser, action: str) -> float:
    """Milliseconds from ``action`` (JavaScript) to the next frame."""
    return b.evaluate(f"(async () => {{ const t = performance.now(); {action}; await {NEXT_FRAME};"
                      " return performance.now() - t; })()")


def load_ms(b: Browser, page: Path) -> float:
    b.open(page)
    return b.evaluate(f"(async () => {{ await {NEXT_FRAME}; return window.AIS_TIMINGS.ready_ms; }})()")


def measure_ours(b: Browser, page: Path, repeat: int) -> dict[str, float]:
    out: dict[str, list[float]] = {k: [] for k in ("load_ms", "sort_ms", "sort_text_ms", "filter_ms", "search_ms")}
    for _ in range(repeat):
        out["load_ms"].append(load_ms(b, page))
        out["sort_ms"].append(timed(b, "document.querySelector(\"th[data-key='abs_error']\").click()"))
        out["sort_text_ms"].append(timed(b, "document.querySelector(\"th[data-key='image_id']\").click()"))
        out["filter_ms"].append(timed(b, "const s = document.getElementById('filter-split'); s.value = '1';"
                                         " s.dispatchEvent(new Event('change'))"))
        shown = b.evaluate("document.querySelectorAll('#grid tbody tr').length")
        assert shown == 50, shown
        out["search_ms"].append(timed(b, "window.AIS_APP.state.search = 'img-0012'; window.AIS_APP.refresh()"))
        assert b.evaluate("window.AIS_APP.rows().every(i => i.includes('img-0012'))")
    return {k: statistics.median(v) for k, v in out.items()}


def measure_naive(b: Browser, page: Path, repeat: int) -> dict[str, float]:
    loads, sorts = [], []
    for _ in range(repeat):
        loads.append(load_ms(b, page))
        sorts.append(timed(b, "document.querySelectorAll('th')[4].click()"))
    return {"naive_load_ms": statistics.median(loads), "naive_sort_ms": statistics.median(sorts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--reference-rows", type=int, default=20_000,
                        help="rows of the reference comparison (the inline-rows page needs GBs at 100,000); 0: skip")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    executable = find_chromium()
    if not executable:
        raise SystemExit("chromium not found: install it (Debian: apt-get install chromium) or set AIS_CHROMIUM")
    with tempfile.TemporaryDirectory(prefix="ais-browser-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        table, top = synthetic(args.rows)
        page = write_ours(folder, table, top)
        result = {"rows": args.rows, "columns": len(table.columns) - 2,
                  "data_mb": round((folder / "browser-data.js").stat().st_size / 1e6, 2),
                  "write_s": round(time.perf_counter() - t0, 2)}
        with Browser(executable, width=1400, height=900, timeout=300) as b:
            result |= {k: round(v, 1) for k, v in measure_ours(b, page, args.repeat).items()}
            result["heap_mb"] = round(b.evaluate("performance.memory.usedJSHeapSize") / 1e6, 1)
            print(json.dumps(result), file=sys.stderr, flush=True)
            if args.reference_rows:
                result |= reference(b, folder, args.reference_rows, args.repeat)
    print(json.dumps(result))


def reference(b: Browser, folder: Path, rows: int, repeat: int) -> dict[str, float]:
    """Ours and the inline-rows page on the same ``rows`` rows: their times and the ratios."""
    small = folder / "reference"
    small.mkdir()
    table, top = synthetic(rows, seed=1)
    ours = measure_ours(b, write_ours(small, table, top), repeat)
    naive = measure_naive(b, write_naive(small, table), repeat)
    return {"reference_rows": rows, "ref_load_ms": round(ours["load_ms"], 1), "ref_sort_ms": round(ours["sort_ms"], 1),
            **{k: round(v, 1) for k, v in naive.items()},
            "load_speedup": round(naive["naive_load_ms"] / ours["load_ms"], 2),
            "sort_speedup": round(naive["naive_sort_ms"] / ours["sort_ms"], 2)}


if __name__ == "__main__":
    main()
