"""The final report's content, without files: the summary, the figures and the page.

- :mod:`ais.reporting.data`    :class:`ReportData`, every input of the report as tables and values
- :mod:`ais.reporting.summary` ``summary.json``'s content (:func:`summarize`)
- :mod:`ais.reporting.figures` the matplotlib figures, as PNG bytes (:func:`draw_figures`)
- :mod:`ais.reporting.markup`  HTML pieces: tables, embedded images, numbers, links
- :mod:`ais.reporting.page`    ``index.html``, one function per section (:func:`render_page`)

The stage :mod:`ais.stages.build_report` reads the workflow's outputs into a
:class:`ReportData` and writes what these modules return.
"""
