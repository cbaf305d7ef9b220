"""``index.html``: one self-contained page, one function per section.

Every figure is embedded as a data URI, so the page opens from disk and can
be mailed or put in a paper's supplement as one file; large figures and the
panels as compressed previews of a set width (:func:`ais.reporting.figures.preview`)
that link their full-resolution files, so the page stays a few MB whatever
the input size. The heatmap browser (``browser.html``, every explained
image) is linked from the top and from each panel. Links to the raw
tables are relative to the page (``results/report/index.html`` ->
``../fusion/channels.parquet``). Wording about the model's output comes
from the task (:class:`ais.tasks.TaskWords`).
"""

from __future__ import annotations

import html
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

from ais.map_figures import GALLERY_GROUPS
from ais.reporting.figures import preview
from ais.reporting.groups import task_sections
from ais.reporting.markup import CSS, ci, fmt, img, link, table
from ais.reporting.validity import validity_section
from ais.tables import LOCALIZATION_AUCS, SPLITS
from ais.tasks import TaskWords

logger = logging.getLogger(__name__)

#: The heatmap browser, written beside the page by the build_browser stage.
BROWSER = "browser.html"


Panels = Mapping[str, Sequence[tuple[str, bytes]]]


def render_page(summary: Mapping[str, Any], figures: Mapping[str, bytes], panels: Panels,
                files: Mapping[str, str], page_dir: Path, words: TaskWords, review: Panels | None = None,
                task_panels: Mapping[str, Any] | None = None, sources: Mapping[str, str] | None = None) -> str:
    """The report page: ``summary`` (:func:`ais.reporting.summary.summarize`) with every figure embedded.

    ``panels`` are the gallery's per-image panels by group, ``files`` the
    linked tables by label (``"rejected rows"`` is also linked from the data
    section), ``page_dir`` the folder the page is written to, ``review`` the
    panels of the most uncertain images (Monte-Carlo dropout), ``task_panels`` the panels of the
    classification outcome galleries and of the per-group galleries (:func:`ais.reporting.groups.task_sections`).
    Figures and panels are embedded as compressed previews (:func:`ais.reporting.figures.preview`) that link
    their full-resolution file (``sources``: figure name -> path) or, for a panel, the image in the browser.
    """
    figures = {name: preview(png, _relative(sources.get(name) if sources else None, page_dir))
               for name, png in figures.items()}
    panels, review, task_panels = (panel_previews(p) for p in (panels, review or {}, task_panels or {}))
    run, data, training, fusion, maps = (summary[k] for k in ("run", "data", "training", "fusion", "heatmaps"))
    parts = [
        *head(run, data, training),
        *validity_section(summary.get("validity"), figures),  # warnings at the top, then "Which map to trust"
        *run_section(run),
        *data_section(data, figures, files["rejected rows"], page_dir, words),
        *training_section(training, figures, words),
        *task_sections(summary, figures, task_panels or {}, words),  # classification and groups, when they apply
        *channels_section(fusion, figures, words),
        *top_section(fusion, figures),
        *gallery_section(figures, panels, words, (run.get("config") or {}).get("heatmaps", {}).get("views")),
        *agreement_section(maps["agreement"], figures),
        *localization_section(maps["localization"]),
        *uncertainty_section(summary.get("uncertainty") or {}, figures, review or {}, words),
        *files_section(files, page_dir),
    ]
    return "\n".join(parts)


def browser_link(image_id: str | None = None) -> str:
    """The heatmap browser beside the page (``browser.html``), opened on ``image_id`` when given."""
    return BROWSER + (f"#image={quote(image_id, safe='')}" if image_id else "")


def panel_previews(obj: Any) -> Any:
    """Every ``(image_id, png)`` pair in nested mappings and lists as a preview linking the image in the browser."""
    if isinstance(obj, Mapping):
        return {k: panel_previews(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], bytes):
        return obj[0], preview(obj[1], browser_link(obj[0]))
    if isinstance(obj, (list, tuple)):
        return [panel_previews(v) for v in obj]
    return obj


def _relative(path: str | None, page_dir: Path) -> str | None:
    if not path:
        return None
    return Path(os.path.relpath(Path(path).resolve(), page_dir.resolve())).as_posix()


def head(run: Mapping[str, Any], data: Mapping[str, Any], training: Mapping[str, Any]) -> list[str]:
    """The document head, the title, one line about the run and the section links."""
    return [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>AIS report</title>", f"<style>{CSS}</style></head><body>",
        "<h1>AIS report: what the realism model sees</h1>",
        f'<p class="muted">git revision {fmt(run.get("git_revision"))}; model {fmt(training.get("arch"))} '
        f'on {fmt(training.get("device"))}; {fmt(data["n_images"])} images.</p>',
        '<nav><a href="#run">Run</a><a href="#data">Data</a><a href="#training">Training</a>'
        '<a href="#channels">Channel scores</a><a href="#top">Top channels</a><a href="#gallery">Heatmaps</a>'
        '<a href="#agreement">Agreement</a><a href="#localization">Localisation</a>'
        '<a href="#uncertainty">Uncertainty</a><a href="#files">Files</a>'
        f'<a href="{BROWSER}"><b>Browse every image</b></a></nav>',
    ]


def run_section(run: Mapping[str, Any]) -> list[str]:
    """Wall time per stage, library versions and the configuration."""
    stages = run.get("stages", [])
    times = table(["stage", "jobs", "sum of job seconds", "longest job (s)", "peak memory (MB)"],
                  [[s["label"], s["jobs"], s["seconds_total"], s["seconds_longest_job"], s["max_rss_mb"]]
                   for s in stages])
    config = html.escape(json.dumps(run.get("config", {}), indent=2, sort_keys=True))
    return ['<h2 id="run">Run summary</h2>',
            "<p>Wall time per stage from the rules' benchmark files (jobs of a stage may run in parallel: "
            "the longest job bounds the stage's wall time, the sum is its compute time).</p>",
            times if stages else "<p>No benchmark files found.</p>",
            table(["library", "version"], sorted((run.get("versions") or {}).items())),
            f"<details><summary>Configuration</summary><pre>{config}</pre></details>"]


def data_section(data: Mapping[str, Any], figures: Mapping[str, bytes], rejected: str, page_dir: Path,
                 words: TaskWords) -> list[str]:
    """Images per split, the scores, the rejected rows (linked) and why they were rejected."""
    score = data["score"]
    rejected_link = f" ({link(rejected, page_dir, 'rejected.csv')})" if data["n_rejected"] else ""
    parts = ['<h2 id="data">Data</h2>',
             table(["split", "images"], [[s, data["per_split"][s]] for s in SPLITS] + [["all", data["n_images"]]]),
             f"<p>Labelled images: {fmt(data['n_labelled'])}; {words.score} mean {fmt(score['mean'])}, "
             f"sd {fmt(score['sd'])}, range {fmt(score['min'])} to {fmt(score['max'])}. "
             f"Rejected rows: {fmt(data['n_rejected'])}{rejected_link}.</p>"]
    parts += [f"<p><b>Split:</b> {html.escape(note)}</p>" for note in data.get("split_notes", [])]
    if data["rejected_reasons"]:
        parts.append(table(["reason", "rows"], sorted(data["rejected_reasons"].items(), key=lambda kv: -kv[1])))
    parts.append(img(figures["scores"], "score distribution", f"{words.score.capitalize()}s per split."))
    return parts


def training_section(training: Mapping[str, Any], figures: Mapping[str, bytes], words: TaskWords) -> list[str]:
    """Epochs, the test metrics with their intervals, the training curve and predicted against true."""
    test = training["test"]
    return ['<h2 id="training">Training and test metrics</h2>',
            f"<p>Best epoch {fmt(training['best_epoch'])} of {fmt(training['epochs_run'])} "
            f"(stopped early: {fmt(training['stopped_early'])}). Test metrics with bootstrap 95 % intervals:</p>",
            table(["metric", "value", "95 % interval"],
                  [[name.upper(), block["value"], ci(block)] for name, block in test.items()]),
            img(figures["training_curve"], "training curve",
                "Training and validation loss and validation SRCC per epoch; dashed: the epoch kept."),
            img(figures["predicted"], "predicted against true", f"Predicted against {words.true}; dashed: identity.")]


def channels_section(fusion: Mapping[str, Any], figures: Mapping[str, bytes], words: TaskWords) -> list[str]:
    """How the scores are fused, the pairs per quadrant, their split-half reliability, their distribution."""
    quadrants = fusion["quadrants"]
    rows = []
    for helpfulness in ("helpful", "harmful", "neutral"):
        row = [helpfulness] + [quadrants.get(f"{helpfulness}-{d}", 0) for d in ("raises", "lowers", "none")]
        rows.append(row + [sum(row[1:])])
    parts = ['<h2 id="channels">Channel scores</h2>',
             f"<p>Fusion: z-score of |&Delta;y| ({fmt(fusion['scope'])} scope, magnitude "
             f"{fmt(fusion['magnitude'])}) times the sign of &Delta;error. "
             f"{fmt(fusion['n_flipped'])} of {fmt(fusion['n_pairs'])} image-channel scores have their direction "
             "flipped by a negative z (|&Delta;y| below the mean).</p>",
             "<p>Image-channel pairs per quadrant (helpful: &Delta;error &gt; 0, removing the channel raises the "
             f"error; {words.raises}: &Delta;y &lt; 0, removing the channel lowers the {words.predicted}):</p>",
             table(["", words.raises, words.lowers, "no effect", "all"], rows)]
    parts += reliability_part(fusion.get("reliability"))
    parts.append(img(figures["channel_scores"], "channel scores",
                     "Left: all image-channel AIS scores. Right: data-set-level score per channel "
                     "(mean over labelled images) with bootstrap 95 % intervals; red helpful, blue harmful."))
    return parts


def reliability_part(reliability: Mapping[str, Any] | None) -> list[str]:
    """The split-half reliability of the data-set-level scores (nothing when fusion did not compute it)."""
    if not reliability:
        return []
    rows = [[name, block.get("spearman"), block.get("spearman_sd"), block.get("spearman_brown"),
             block.get("n_splits"), block.get("n_images")]
            for name, block in reliability.items() if isinstance(block, Mapping)]
    return ["<p>Split-half reliability of the data-set-level channel scores: Spearman correlation between "
            "the scores from two random halves of the images, averaged over random halvings "
            "(Spearman-Brown: corrected to the full set). <i>ais</i>: mean AIS score; <i>direction</i>: "
            "mean &minus;&Delta;y.</p>",
            table(["score", "split-half Spearman", "sd over halvings", "Spearman-Brown", "halvings", "images"], rows)]


def top_section(fusion: Mapping[str, Any], figures: Mapping[str, bytes]) -> list[str]:
    """The five most helpful and most harmful channels, and their top-activating crops."""
    def rows(group: str, channels: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
        return [[group, c["channel"], c["mean_ais_score"], ci(c), c["fraction_helpful"], c["mean_delta_prediction"]]
                for c in channels[:5]]

    parts = ['<h2 id="top">Top channels</h2>',
             table(["group", "channel", "mean AIS score", "95 % interval", "fraction helpful", "mean Δy"],
                   rows("helpful", fusion["top_helpful"]) + rows("harmful", fusion["top_harmful"]))]
    if "crops" in figures:
        parts.append(img(figures["crops"], "top channel crops",
                         "The crops (of the model's input view) that activate each top channel most, "
                         "highest first; one row per channel."))
    return parts


def views_part(views: Sequence[str] | None) -> list[str]:
    """The views in the panels and the gallery, in panel order, with what each one shows."""
    from ais.views import get_view, list_views

    rows = [[get_view(v).title, get_view(v).description] for v in (views or list_views())]
    return ["<p>The views, in panel order (a view whose maps were not computed is left out):</p>",
            table(["view", "what it shows"], rows)]


def gallery_section(figures: Mapping[str, bytes], panels: Panels, words: TaskWords,
                    views: Sequence[str] | None = None) -> list[str]:
    """How the maps are drawn, the views, the colour scale, the gallery and the per-image panels by group."""
    parts = ['<h2 id="gallery">Heatmaps</h2>',
             "<p>Maps are divided by their maximum absolute value into [&minus;1, 1] and drawn over the image "
             "(60 % image, 40 % map) with a red&ndash;blue scale centred at 0. <b>AIS</b>: the layer's ReLU "
             "activations weighted by the image's AIS scores (red: helpful channels, blue: harmful). "
             f"<b>Direction</b>: weighted by &minus;&Delta;y (red: {words.raises}, blue: lowers it). "
             "<b>Primary</b> (the seed's primary map): only the helpful channels (&Delta;error &gt; 0), "
             f"weighted by &minus;&Delta;y (red: {words.raises}, blue: lowers it), harmful regions outlined in grey. "
             "Grad-CAM and saliency use their own [0, 1] scale.</p>",
             *views_part(views),
             img(figures["colour_scale"], "colour scale", "The signed colour scale."),
             img(figures["gallery"], "heatmap gallery", "Best-, median- and worst-predicted images."),
             f'<p>Every explained image, sortable and filterable, each with its panel: <a href="{BROWSER}">the '
             "heatmap browser</a>. Click a panel below to open its image there.</p>"]
    for group, shown in panels.items():
        what = f"{group}-predicted" if group in GALLERY_GROUPS else f"{group} {words.predicted}"
        parts += [img(png, f"{group}: {image_id}", f"{what}: {image_id}") for image_id, png in shown]
    return parts


def agreement_section(agreement: Mapping[str, Any], figures: Mapping[str, bytes]) -> list[str]:
    """CC, SIM and KLD between |AIS| and Grad-CAM over images."""
    rows = [[name, block["n"], block["mean"], block["median"]]
            for name, block in agreement.items() if isinstance(block, Mapping)]
    return ['<h2 id="agreement">Agreement between AIS and the reference maps</h2>',
            "<p>Per image, |AIS| against each reference map (<i>metric_reference</i>: Grad-CAM, Grad-CAM++, "
            "saliency) as saliency benchmarks define them: CC (Pearson), "
            "SIM (histogram intersection of the normalised maps) and KLD (Kullback-Leibler divergence, "
            "lower is closer).</p>",
            table(["metric", "images", "mean", "median"], rows),
            img(figures["agreement"], "agreement", "Distribution over images; orange: median.")]


def localization_section(loc: Mapping[str, Any]) -> list[str]:
    """The localisation AUCs against the demo's ground-truth masks, or why there are none."""
    parts = ['<h2 id="localization">Localisation (demo masks)</h2>']
    aucs = [[k, loc.get(k)] for k in LOCALIZATION_AUCS if k in loc]
    if any(v is not None for _, v in aucs):
        parts += ["<p>Area under the ROC curve of each map's pixels against the ground-truth regions "
                  "(see the README for which map and which mask each key uses).</p>",
                  table(["key", "AUC"], aucs)]
    else:
        parts.append(f"<p>No ground-truth masks in this data set: {fmt(loc.get('reason', 'not computed'))}.</p>")
    return parts


def uncertainty_section(unc: Mapping[str, Any], figures: Mapping[str, bytes], review: Panels,
                        words: TaskWords) -> list[str]:
    """Monte-Carlo dropout: std against |error| with their Spearman correlation, the most uncertain images."""
    parts = ['<h2 id="uncertainty">Uncertainty (Monte-Carlo dropout)</h2>']
    if unc.get("status") != "sampled" or not unc.get("n_images"):
        return parts + [f"<p>Not sampled ({fmt(unc.get('status', 'not recorded'))}): "
                        f"{html.escape(str(unc.get('reason') or 'no Monte-Carlo dropout columns'))}.</p>"]
    parts += [f"<p>{fmt(unc['mc_samples'])} samples per image with the dropout layers "
              f"({html.escape(', '.join(unc.get('dropout_layers', [])))}) sampling and everything else in eval "
              f"mode. Spearman correlation of the standard deviation with the absolute error on the test split "
              f"({fmt(unc.get('test_n'))} images): {fmt(unc.get('test_srcc_std_abs_error'))}.</p>"]
    if "uncertainty" in figures:
        parts.append(img(figures["uncertainty"], "uncertainty against error",
                         "Monte-Carlo dropout standard deviation against the absolute error, per split."))
    parts += ["<p>Most uncertain images, for review:</p>",
              table(["image", "split", words.true, words.predicted, "MC mean", "MC std", "|error|"],
                    [[r["image_id"], r["split"], r["y_true"], r["y_pred"], r["mc_mean"], r["mc_std"], r["abs_error"]]
                     for r in unc.get("review", [])])]
    for _, shown in review.items():
        parts += [img(png, f"uncertain: {image_id}", f"most uncertain: {image_id}") for image_id, png in shown]
    return parts


def files_section(files: Mapping[str, str], page_dir: Path) -> list[str]:
    """Links to the tables behind the page, relative to it."""
    return ['<h2 id="files">Files</h2><ul>',
            *[f"<li>{html.escape(label)}: {link(path, page_dir)}</li>" for label, path in files.items()],
            "</ul></body></html>"]
