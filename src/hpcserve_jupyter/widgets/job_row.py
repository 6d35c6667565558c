"""One job's cells in the control panel's Jobs table: name, state badge, a progress bar with
done/total, failures, elapsed time, ETA, and its Cancel and Results buttons."""

from __future__ import annotations

import html
from typing import Any, Protocol

import ipywidgets as W

from ..views import age, badge

LIVE = ("pending", "starting", "running")


class JobActions(Protocol):
    """What a row's buttons do (the panel's Jobs tab)."""

    def cancel(self, jid: str) -> None: ...
    def load_results(self, jid: str) -> None: ...


class JobRow:
    """A job's widgets, updated from its public JSON (as events carry it)."""

    def __init__(self, jid: str, actions: JobActions) -> None:
        self.jid = jid
        self.data: dict[str, Any] = {}
        self.name = W.HTML()
        self.state = W.HTML()
        self.progress = W.IntProgress(min=0, max=1, value=0, bar_style="info",
                                      layout=W.Layout(width="10em"))
        self.counts = W.Label()
        self.failed = W.Label()
        self.elapsed = W.Label()
        self.eta = W.Label()
        small = W.Layout(width="6em")
        self.cancel_button = W.Button(description="cancel", button_style="danger",
                                      layout=small, tooltip="cancel this job (its output so "
                                      "far is kept)")
        self.results_button = W.Button(description="results", layout=small,
                                       tooltip="load its answers below (partial while it runs)")
        self.cancel_button.on_click(lambda _: actions.cancel(jid))
        self.results_button.on_click(lambda _: actions.load_results(jid))
        self.actions = W.HBox([self.cancel_button, self.results_button])

    @property
    def cells(self) -> list[W.Widget]:
        return [self.name, self.state, self.progress, self.counts, self.failed, self.elapsed,
                self.eta, self.actions]

    @property
    def state_name(self) -> str:
        return str(self.data.get("state", ""))

    @property
    def live(self) -> bool:
        return self.state_name in LIVE

    @property
    def version(self) -> int:
        return int(self.data.get("version") or 0)

    def update(self, data: dict[str, Any]) -> None:
        self.data = data
        state = self.state_name
        title = f"id {self.jid}, {data.get('recipe')} on {data.get('target')}"
        self.name.value = (f'<span title="{html.escape(title)}">'
                           f"{html.escape(str(data.get('name')))}</span>")
        reason = str(data.get("reason") or "")
        self.state.value = (f'<span title="{html.escape(reason)}">'
                            f"{badge(state, bool(data.get('unreachable')))}</span>")
        total, done = int(data.get("total") or 0), int(data.get("done") or 0)
        # max first when it grows, value first when it shrinks: value stays within [min, max]
        if total >= self.progress.max:
            self.progress.max = max(total, 1)
            self.progress.value = min(done, self.progress.max)
        else:
            self.progress.value = min(done, max(total, 1))
            self.progress.max = max(total, 1)
        self.progress.bar_style = ("success" if state == "done" else "info" if state in LIVE
                                   else "danger" if state in ("failed", "timeout") else "warning")
        self.counts.value = f"{done}/{total}" if total else str(done)
        self.failed.value = str(data.get("failed") or 0)
        self.elapsed.value = age(float(data.get("elapsed_s") or 0))
        eta = data.get("eta_s")
        self.eta.value = "-" if eta is None else age(float(eta))
        self.cancel_button.disabled = state not in LIVE

    def text(self) -> str:
        d = self.data
        return f"{d.get('name')}  {self.state_name}  {self.counts.value}  {self.failed.value}"

    def close(self) -> None:
        for w in [*self.cells, *self.actions.children]:
            w.close()
