"""The control panel's Logs tab: the last lines of a session's engine log, read on a worker
thread (a remote target's log may take a while)."""

from __future__ import annotations

import ipywidgets as W

from .shared import Shared, message, select, set_options


class LogsTab:
    """A session chooser, how many lines, a show button and the log text."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.log_session = W.Dropdown(options=[], description="session")
        self.log_tail = W.BoundedIntText(value=200, min=0, max=100000, description="lines",
                                         layout=W.Layout(width="11em"))
        self.log_refresh = W.Button(description="show", icon="refresh")
        self.log_text = W.Textarea(disabled=True, placeholder="the engine's log",
                                   layout=W.Layout(width="100%", height="18em"))
        self.log_refresh.on_click(lambda _: self.load())
        self.box = W.VBox([W.HBox([self.log_session, self.log_tail, self.log_refresh]),
                           self.log_text])

    def offer(self, choices: list[tuple[str, str]]) -> None:
        """The sessions to choose from: (label, id) pairs."""
        set_options(self.log_session, choices)

    def select(self, sid: str) -> None:
        with self.shared.lock:
            select(self.log_session, sid)

    def load(self, sid: str | None = None) -> None:
        """Show the log of `sid` (default: the chosen session)."""
        sid = sid or self.log_session.value
        if not sid:
            return
        tail = self.log_tail.value or None

        def work() -> None:
            try:
                self.log_text.value = self.shared.facade.logs(sid, tail=tail)
            except Exception as exc:
                self.log_text.value = f"(no log: {message(exc)})"

        self.shared.start(work, "logs")
