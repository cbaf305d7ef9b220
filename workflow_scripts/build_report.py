"""Rule build_report: results/report/index.html and summary.json."""

from ais.logs import setup_logging
from ais.report import ReportInputs, build_report

if __name__ == "__main__":
    log = setup_logging(snakemake.log[0])  # noqa: F821 (injected by Snakemake)
    inp, out, params = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
    inputs = ReportInputs(
        manifest=inp.manifest, rejected=inp.rejected, metrics=inp.metrics, history=inp.history,
        predictions=inp.predictions, training_curve=inp.training_curve, scores=inp.scores,
        channels=inp.channels, fusion_summary=inp.fusion_summary, agreement=inp.agreement,
        localization=inp.localization, gallery=inp.gallery, crops=inp.crops, crops_figure=inp.crops_figure,
        panels=list(inp.panels), benchmarks=params.benchmarks, config=dict(params.config),
    )
    build_report(
        inputs, out.html, out.summary,
        figure_paths={"scores": out.scores, "predicted": out.predicted, "channel_scores": out.channel_scores,
                      "agreement": out.agreement},
        gallery_per_group=params.gallery,
    )
