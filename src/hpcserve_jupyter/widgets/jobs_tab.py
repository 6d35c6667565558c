"""The control panel's Jobs tab: the submit form, a table of jobs (live first, then the most
recent ended ones) with a progress bar each, Cancel and Results per row, and the loaded results.

The table follows the facade's event stream (job events carry the job's public JSON, the
snapshot the live jobs): no polling. It reads the job list once when it opens, for the recent
ended jobs a snapshot does not carry, and again on `refresh` (the button, or a `resync`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from ..views import Table
from .job_form import JobForm
from .job_row import JobRow
from .shared import Shared, message

if TYPE_CHECKING:
    from ..jobs import Job

COLUMNS = ("name", "state", "progress", "done", "failed", "elapsed", "eta", "actions")
WIDTHS = "minmax(9em,1.6fr) 7em 10em 6em 4em 5em 5em 13em"
KEEP_ENDED = 10  # ended jobs the table keeps showing, newest first
SHOWN_ROWS = 50  # result rows the tab shows (all of them are in `results`)
SHOWN_COLUMNS = ("custom_id", "status_code", "text", "error")


class JobsTab:
    """The jobs by id (`rows`), the form (`form`), the last results loaded (`results`, a pandas
    DataFrame or a list of dicts, for job `results_job`) and what the buttons do."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.rows: dict[str, JobRow] = {}
        self.results: Any = None
        self.results_job: str | None = None
        self.form = JobForm(shared, on_submitted=self._submitted)
        self.status = W.HTML()  # outcomes of cancel and results, and their errors
        self.table = W.GridBox(layout=W.Layout(grid_template_columns=WIDTHS,
                                               grid_gap="2px 8px", align_items="center"))
        self._header = [W.HTML(f"<b>{c}</b>") for c in COLUMNS]
        self.refresh_button = W.Button(description="refresh", icon="refresh",
                                       tooltip="re-read the jobs (the table also follows "
                                       "every change as it happens)")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.results_view = W.HTML()
        self.box = W.VBox([self.form.box, self.table, W.HBox([self.refresh_button,
                                                              self.status]),
                           self.results_view])
        self.refresh()

    # ------------------------------------------------------------------ the table

    def refresh(self) -> None:
        """Re-read the jobs: every live one and the most recent ended ones."""
        for job in self.shared.facade.jobs():
            self._upsert(job.public())
        self.render()

    def on_event(self, event: dict[str, Any]) -> None:
        """One event of the facade's stream; session events are not this tab's."""
        kind = event.get("type")
        if kind == "snapshot":
            for data in event.get("jobs") or []:
                self._upsert(data)
        elif kind == "resync":
            self.refresh()
            return
        elif event.get("job"):
            self._upsert(event["job"])
        else:
            return
        self.render()

    def _submitted(self, job: Job) -> None:
        self._upsert(job.public())
        self.render()

    def _upsert(self, data: dict[str, Any]) -> None:
        """A job's newest JSON into its row; an older version (a list read while an event
        was on its way) is ignored."""
        jid = data["id"]
        with self.shared.lock:
            row = self.rows.get(jid)
            if row is None:
                row = self.rows[jid] = JobRow(jid, self)
            elif int(data.get("version") or 0) < row.version:
                return
            row.update(data)
            self.shared.changed.notify_all()

    def _sorted(self) -> list[JobRow]:
        """Live jobs oldest first, then ended ones newest first (at most KEEP_ENDED: the rows
        of older ones are dropped)."""
        live = sorted((r for r in self.rows.values() if r.live),
                      key=lambda r: r.data.get("created_at") or 0)
        ended = sorted((r for r in self.rows.values() if not r.live),
                       key=lambda r: -(r.data.get("ended_at") or r.data.get("updated_at") or 0))
        for row in ended[KEEP_ENDED:]:
            del self.rows[row.jid]
            row.close()
        return live + ended[:KEEP_ENDED]

    def render(self) -> None:
        with self.shared.lock:
            cells: list[W.Widget] = list(self._header)
            for row in self._sorted():
                cells.extend(row.cells)
            self.table.children = cells
            self.shared.changed.notify_all()

    def table_text(self) -> str:
        """The table as plain text: NAME STATE DONE/TOTAL FAILED per line, in table order."""
        with self.shared.lock:
            return "\n".join(r.text() for r in self._sorted())

    def state_of(self, jid: str) -> str | None:
        with self.shared.lock:
            row = self.rows.get(jid)
            return row.state_name if row else None

    # ------------------------------------------------------------------ the buttons

    def cancel(self, jid: str) -> None:
        row = self.rows.get(jid)
        if row:
            row.cancel_button.disabled = True

        def work() -> None:
            try:
                job = self.shared.facade.cancel_job(jid)
                self._upsert(job.public())
                self.render()
                self.shared.say(self.status, f"{job.name}: {job.state} ({job.done}/{job.total} "
                                f"answered, kept in {job.output})")
            except Exception as exc:
                self.shared.say(self.status, message(exc), error=True)

        self.shared.start(work, "cancel")

    def load_results(self, jid: str) -> None:
        """A job's answers (partial while it runs) into `results` and the view below."""
        from ..jobhandle import JobHandle

        facade = self.shared.facade

        def work() -> None:
            try:
                handle = JobHandle(facade, facade.job_status(jid))
                data = handle.results()  # a task's: its output directory (a Path)
                with self.shared.lock:
                    self.results, self.results_job = data, jid
                self.results_view.value = results_html(data, handle.job)
                what = f"output in {data}" if isinstance(data, Path) else \
                    f"{len(data)} results loaded (the panel's jobs.results holds them all)"
                self.shared.say(self.status, f"{handle.job.name}: {what}")
            except Exception as exc:
                self.shared.say(self.status, message(exc), error=True)
            with self.shared.changed:
                self.shared.changed.notify_all()

        self.shared.start(work, "results")

    def close(self) -> None:
        self.form.box.close()
        with self.shared.lock:
            for row in self.rows.values():
                row.close()


def results_html(data: Any, job: Job) -> str:
    """The first SHOWN_ROWS answers as a table (a DataFrame's own HTML when pandas is there);
    a task's output directory as the list of its files."""
    if isinstance(data, Path):
        files = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
        listing = "\n".join(files[:SHOWN_ROWS]) + ("\n…" if len(files) > SHOWN_ROWS else "")
        count = f"{len(files)} file{'s' if len(files) != 1 else ''}"
        return (f"<b>{html.escape(job.name)}</b>: {count} in <code>{html.escape(str(data))}"
                f"</code><pre>{html.escape(listing)}</pre>")
    title = (f"<b>{html.escape(job.name)}</b>: {len(data)} results"
             + (f", the first {SHOWN_ROWS}" if len(data) > SHOWN_ROWS else ""))
    if hasattr(data, "to_html"):  # a pandas DataFrame
        columns = [c for c in SHOWN_COLUMNS if c in data.columns]
        body = data[columns].head(SHOWN_ROWS).to_html(index=False, na_rep="")
    else:
        body = Table(data[:SHOWN_ROWS], [(c.upper(), c) for c in SHOWN_COLUMNS]).html()
    return f'{title}<div style="max-height:24em;overflow:auto">{body}</div>'
