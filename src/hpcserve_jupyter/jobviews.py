"""What the front ends show of one-off jobs: a job table (plain text for the CLI and IPython,
HTML with progress bars for notebooks), one job in detail and a one-line progress report.
Pure Python, like views.py, whose helpers it uses."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .views import _View, age, badge, html_table, text_table

if TYPE_CHECKING:
    from .jobs import Job

HEADER = ("ID", "NAME", "STATE", "PROGRESS", "FAILED", "ELAPSED", "ETA", "TARGET")


def fraction(job: Job) -> str:
    if not job.total:
        return f"{job.done}"
    return f"{job.done}/{job.total} ({100 * job.done // job.total}%)"


def eta(job: Job) -> str:
    value = job.eta_s
    return "-" if value is None else age(value)


def progress_line(job: Job) -> str:
    """`name: running 120/500 (24%), 2 failed, 1m elapsed, eta 3m` (the CLI's --wait line)."""
    parts = [f"{job.name}: {job.state} {fraction(job)}"]
    if job.failed:
        parts.append(f"{job.failed} failed")
    parts.append(f"{age(job.elapsed_s)} elapsed")
    if job.eta_s:
        parts.append(f"eta {eta(job)}")
    if (job.state.terminal and job.reason) or (job.state == "pending" and job.reason):
        parts.append(job.reason)
    return ", ".join(parts)


def bar_html(job: Job) -> str:
    share = job.done / job.total if job.total else 0.0
    return (f'<progress class="hpcserve-job-progress" max="1" value="{share:.4f}" '
            f'style="width:8em"></progress> {html.escape(fraction(job))}')


class JobList(list, _View):
    """Jobs as a table; a list of Job, so `%serve job status` returns data too."""

    def __init__(self, jobs: Iterable[Job] = (), empty: str = "no jobs") -> None:
        super().__init__(jobs)
        self.empty = empty

    def _row(self, j: Job) -> list[str]:
        return [j.id, j.name, str(j.state), fraction(j), str(j.failed), age(j.elapsed_s),
                eta(j), j.target]

    def text(self) -> str:
        return text_table(HEADER, map(self._row, self)) if self else self.empty

    def html(self) -> str:
        if not self:
            return f"<p>{html.escape(self.empty)}</p>"
        rows = []
        for j in self:
            row = self._row(j)
            row[2], row[3] = badge(str(j.state), j.unreachable), bar_html(j)
            rows.append(row)
        return html_table(HEADER, rows, raw_columns=frozenset({2, 3}))

    __repr__ = _View.__repr__  # list's own would come first
    _repr_pretty_ = _View._repr_pretty_


class JobDetail(_View):
    def __init__(self, job: Job) -> None:
        self.job = job

    def pairs(self) -> list[tuple[str, str]]:
        j = self.job
        return [("id", j.id), ("name", j.name), ("state", str(j.state)), ("reason", j.reason),
                ("recipe", f"{j.recipe} ({j.backend})"), ("target", j.target),
                ("progress", fraction(j)), ("failed", str(j.failed)),
                ("elapsed", age(j.elapsed_s)), ("eta", eta(j)), ("input", j.input),
                ("output", j.output)]

    def text(self) -> str:
        lines = [f"{k:9} {v}" for k, v in self.pairs() if v]
        if self.job.log_tail and self.job.state in ("failed", "timeout"):
            lines += ["--- last lines of the job log ---", self.job.log_tail]
        return "\n".join(lines)
