"""A bench report as `%serve bench` returns it in a terminal or with `--no-plot`: the same
report (metrics, evaluation, files, `figure()`), shown as its text summary only.

Its own module so that loading the magics does not import the bench code.
"""

from __future__ import annotations

from ..bench import BenchReport


class TextOnlyReport(BenchReport):
    """A BenchReport without an HTML view: IPython shows the summary lines, not the plot."""

    @classmethod
    def of(cls, report: BenchReport) -> TextOnlyReport:
        return cls(report.report, report.evaluation, report.report_path, report.evaluation_path)

    def _repr_html_(self) -> str | None:  # type: ignore[override]  # None: IPython shows no HTML
        return None
