"""The control panel: the launch form above four tabs (Sessions, Logs, Chat, Jobs), one module
each.

Everything goes through the facade (`api.default()` unless one is given). The session table
follows the facade's event stream (`facade.subscribe`): no polling. A ticker (every `tick`
seconds) counts the rows' age and time left down locally and, while the Sessions tab is shown,
asks for the ready sessions' metrics every `metrics_every` seconds (the server scrapes an
engine only while someone asks). Slow calls (launch and wait, stop, relaunch, extend, prompts,
logs) run on worker threads so the kernel stays responsive; `join()` waits for them and
`wait_for(predicate)` for a state of the panel (tests and notebooks).

This module only composes the parts and is the panel's scripting surface: their widgets and
actions are attributes of the panel (`panel.recipe`, `panel.send()`...), as notebooks use them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from .chat_tab import ChatTab
from .jobs_tab import JobsTab
from .launch_form import LaunchForm
from .logs_tab import LogsTab
from .session_row import SessionRow
from .sessions_tab import SessionsTab
from .shared import Shared
from .ticker import Ticker

if TYPE_CHECKING:
    from ..events import Subscription
    from ..facade import Facade


class ControlPanel:
    """The panel's widgets (attributes, for scripting and tests) and what they do."""

    def __init__(self, facade: Facade | None = None, *, subscribe: bool = True,
                 tick: float | None = 1.0, metrics_every: float = 5.0) -> None:
        if facade is None:
            from .. import api

            facade = api.default()
        self.facade = facade
        self._shared = Shared(facade)
        self.form = LaunchForm(self._shared)
        self.sessions = SessionsTab(self._shared, show_logs=self.show_logs,
                                    chat_with=self.chat_with, on_render=self._offer)
        self.logs = LogsTab(self._shared)
        self.chat = ChatTab(self._shared)
        self.jobs = JobsTab(self._shared)
        self._expose_widgets()
        self.sessions.render()
        self.tabs = W.Tab(children=[self.sessions.box, self.logs.box, self.chat.box,
                                    self.jobs.box], titles=("Sessions", "Logs", "Chat", "Jobs"))
        self.widget = W.VBox([W.HTML("<b>hpcserve</b> — launch and prompt AI serving sessions"),
                              self.form.box, self.tabs])
        self._subscription: Subscription | None = (
            facade.subscribe(self._on_event) if subscribe else None)
        if self._subscription is None:  # no event stream: the table changes on `refresh`
            self.refresh()
        self.metrics_every = metrics_every
        self._metrics_due = 0.0  # monotonic time of the next metrics poll
        self._ticker = Ticker(self._tick, tick, "panel-ticker") if tick else None

    def _tick(self) -> None:
        """The countdowns to now; the metrics when due and the Sessions tab is shown. Ends
        with the facade (its closing ends the subscription): nothing is left to show."""
        sub, ticker = self._subscription, self._ticker
        if sub is not None and sub.closed and ticker is not None:
            ticker.close()
            return
        self.sessions.tick()
        now = time.monotonic()
        if self.tabs.selected_index == 0 and now >= self._metrics_due:
            self._metrics_due = now + self.metrics_every
            self.sessions.poll_metrics()

    def _expose_widgets(self) -> None:
        """The parts' widgets and state as the panel's own attributes (one object to script)."""
        form, sessions, logs, chat = self.form, self.sessions, self.logs, self.chat
        self.recipe = form.recipe
        self.recipe_info = form.recipe_info
        self.backend = form.backend
        self.target = form.target
        self.gpus = form.gpus
        self.nodes = form.nodes
        self.time = form.time
        self.replicas = form.replicas
        self.session_name = form.session_name
        self.secrets_box = form.secrets_box
        self.secret_fields = form.secret_fields  # the same dict: refilled when the target changes
        self.launch_button = form.launch_button
        self.progress = form.progress
        self.launch_status = form.launch_status
        self.pull_button = form.pull_button
        self.pull_progress = form.pull_progress
        self.pull_status = form.pull_status
        self.launch_box = form.box
        self.launched = form.launched
        self.table = sessions.table
        self.refresh_button = sessions.refresh_button
        self.status = sessions.status
        self.rows = sessions.rows
        self.relaunched = sessions.relaunched  # the same list: ids of relaunched sessions
        self.extend_time = sessions.extend_time
        self.notices = sessions.notices  # the same list: notice events, oldest first
        self.notice_log = sessions.notice_log
        self.sessions_box = sessions.box
        self.log_session = logs.log_session
        self.log_tail = logs.log_tail
        self.log_refresh = logs.log_refresh
        self.log_text = logs.log_text
        self.logs_box = logs.box
        self.chat_session = chat.chat_session
        self.max_tokens = chat.max_tokens
        self.temperature = chat.temperature
        self.chat_input = chat.chat_input
        self.send_button = chat.send_button
        self.clear_button = chat.clear_button
        self.chat_log = chat.chat_log
        self.chat_box = chat.box
        self.history = chat.history  # the same list: cleared in place by Clear
        self.errors = self._shared.errors

    # ------------------------------------------------------------------ display

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        if isinstance(bundle, tuple):
            bundle = bundle[0]
        bundle = dict(bundle or {})
        bundle["text/plain"] = "hpcserve control panel (widgets: shown in Jupyter)"
        return bundle

    def __repr__(self) -> str:
        return f"<hpcserve ControlPanel: {len(self.rows)} sessions>"

    def close(self) -> None:
        """Unsubscribe and close every widget (sessions keep running)."""
        if self._ticker is not None:
            self._ticker.close()
            self._ticker = None
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        self.sessions.close()
        self.jobs.close()
        self.widget.close()

    # ------------------------------------------------------------------ between the tabs

    def _on_event(self, event: dict[str, Any]) -> None:
        """An event to the tab it is about: a job's to Jobs, a session's to Sessions, a
        snapshot or resync to both."""
        if not event.get("job"):
            self.sessions.on_event(event)
        if not event.get("session"):
            self.jobs.on_event(event)

    def _offer(self, rows: list[SessionRow]) -> None:
        """The sessions the Logs tab offers (all in the table) and the Chat tab (ready ones)."""
        choices = [(f"{r.data.get('name')} ({r.state_name})", r.sid) for r in rows]
        self.logs.offer(choices)
        self.chat.offer([c for c, r in zip(choices, rows, strict=True)
                         if r.state_name == "ready"])

    def show_logs(self, sid: str) -> None:
        """What a row's `logs` button does: select the session, open the tab, load the log."""
        self.logs.select(sid)
        self.tabs.selected_index = 1
        self.logs.load(sid)

    def chat_with(self, sid: str) -> None:
        """What a row's `prompt` button does: select the session in the chat tab."""
        self.chat.select(sid)
        self.tabs.selected_index = 2

    # ------------------------------------------------------------------ the parts' actions

    def overrides(self) -> dict[str, int | str]:
        return self.form.overrides()

    def launch(self) -> None:
        self.form.launch()

    def refresh(self) -> None:
        self.sessions.refresh()
        self.jobs.refresh()

    def table_text(self) -> str:
        return self.sessions.table_text()

    def state_of(self, sid: str) -> str | None:
        return self.sessions.state_of(sid)

    def stop(self, sid: str) -> None:
        self.sessions.stop(sid)

    def keepalive(self, sid: str) -> None:
        self.sessions.keepalive(sid)

    def relaunch(self, sid: str) -> None:
        self.sessions.relaunch(sid)

    def extend(self, sid: str, duration: str | None = None) -> None:
        self.sessions.extend(sid, duration)

    def poll_metrics(self) -> None:
        """Ask for the ready sessions' metrics now (the ticker does it while the tab shows)."""
        self.sessions.poll_metrics()

    def use_in_jupyter_ai(self, sid: str) -> None:
        self.sessions.use_in_jupyter_ai(sid)

    def load_logs(self, sid: str | None = None) -> None:
        self.logs.load(sid)

    def send(self) -> None:
        self.chat.send()

    def clear_chat(self) -> None:
        self.chat.clear()

    @property
    def last_answer(self) -> str | None:
        return self.chat.last_answer

    # ------------------------------------------------------------------ waiting

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the panel's worker threads (launches, stops, prompts); False on timeout."""
        return self._shared.join(timeout)

    def wait_for(self, predicate: Callable[[ControlPanel], bool],
                 timeout: float = 60.0) -> bool:
        """Block until `predicate(panel)` holds (re-checked on every table change)."""
        return self._shared.wait_for(lambda: predicate(self), timeout)
