"""The control panel's Sessions tab: a live table of sessions that follows the facade's event
stream (no polling), with stop, keepalive, extend and relaunch per row, a status line for their
outcomes and an events area for the server's notices (a session about to end, idle autostop
near, an engine no longer answering).

The countdowns run on the panel's ticker from the time each session's JSON arrived; the load
column (metrics) is the one thing asked for, and only while the tab is shown (`poll_metrics`)."""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as W

from .. import views
from ..errors import NotFound
from .session_row import SessionRow
from .shared import Shared, message

COLUMNS = ("name", "recipe", "target", "state", "age", "left", "endpoint", "load", "actions")
WIDTHS = ("minmax(8em,1.4fr) minmax(7em,1.2fr) 6em 8em 4em 5em minmax(10em,1.6fr) "
          "minmax(8em,1.2fr) 31em")
# Events that say something about a session beyond its state: shown in the events area.
NOTICES = {"expiring": "warning", "idle-expiring": "warning", "degraded": "warning",
           "extended": "info", "healthy": "info"}
SHOWN_NOTICES = 8  # the newest notices the events area shows (all are in `notices`)
METRICS_PAUSE_S = 60.0  # after a metrics call failed for a session, ask again this much later


class SessionsTab:
    """The table's rows by session id, its widgets, and what its buttons do. `show_logs` and
    `chat_with` (a row's logs and prompt buttons) open the other tabs; `on_render` hears of
    every new order or state of the rows (the other tabs offer those sessions)."""

    def __init__(self, shared: Shared, *, show_logs: Callable[[str], None],
                 chat_with: Callable[[str], None],
                 on_render: Callable[[list[SessionRow]], None]) -> None:
        self.shared = shared
        self.show_logs = show_logs
        self.chat_with = chat_with
        self._on_render = on_render
        self.rows: dict[str, SessionRow] = {}
        self.relaunched: list[str] = []  # ids of the sessions the relaunch buttons made
        self.notices: list[dict[str, Any]] = []  # the notice events seen, oldest first
        self._metrics_pause: dict[str, float] = {}  # session id -> monotonic time to ask again
        self.status = W.HTML()  # outcomes of actions (stop, keepalive) and errors
        self.table = W.GridBox(layout=W.Layout(grid_template_columns=WIDTHS,
                                               grid_gap="2px 8px", align_items="center"))
        self._header = [W.HTML(f"<b>{c}</b>") for c in COLUMNS]
        self.refresh_button = W.Button(description="refresh", icon="refresh",
                                       tooltip="re-read the sessions (the table also follows "
                                       "every change as it happens)")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.extend_time = W.Text(value="30m", description="extend by",
                                  layout=W.Layout(width="14em"),
                                  tooltip="what a row's extend button asks for (30m, 1h...)")
        self.notice_log = W.HTML()  # the newest notices, newest first
        self.box = W.VBox([self.table,
                           W.HBox([self.refresh_button, self.extend_time, self.status]),
                           self.notice_log])

    def refresh(self) -> None:
        """Re-read live sessions (and keep showing ended ones already in the table)."""
        for s in self.shared.facade.sessions(live_only=True):
            self._upsert(s.public())
        self.tick()
        self.render()

    def on_event(self, event: dict[str, Any]) -> None:
        """One event of the facade's stream (a snapshot, a session's change, a notice, a
        resync)."""
        kind = event.get("type")
        if kind == "snapshot":
            for data in event.get("sessions", []):
                self._upsert(data)
        elif kind == "resync":
            self.refresh()
            return
        elif event.get("session"):
            self._upsert(event["session"])
            if kind in NOTICES:
                self._notice(event)
        self.render()

    def _upsert(self, data: dict[str, Any]) -> None:
        sid = data["id"]
        with self.shared.lock:
            row = self.rows.get(sid)
            if row is None:
                row = self.rows[sid] = SessionRow(sid, self)
            elif (row.data.get("version") or 0) > (data.get("version") or 0):
                return  # an older copy (an action's answer overtaken by events)
            row.update(data)
            self.shared.changed.notify_all()

    def _notice(self, event: dict[str, Any]) -> None:
        """Add a notice to the events area: its time, session, kind and message."""
        session = event["session"]
        entry = {"type": event.get("type"), "session_id": session.get("id"),
                 "name": session.get("name"), "message": str(event.get("message") or ""),
                 "ts": event.get("ts") or time.time()}
        with self.shared.lock:
            self.notices.append(entry)
            shown = self.notices[-SHOWN_NOTICES:][::-1]
            lines = []
            for n in shown:
                colour = views.AMBER if NOTICES.get(str(n["type"])) == "warning" else "inherit"
                when = time.strftime("%H:%M:%S", time.localtime(n["ts"]))
                kind = html.escape(str(n["type"]))
                lines.append(f'<div class="hpcserve-notice" data-type="{kind}" '
                             f'style="color:{colour}">{when} <b>{html.escape(str(n["name"]))}'
                             f"</b> {kind}: {html.escape(n['message'])}</div>")
            self.notice_log.value = "".join(lines)
            self.shared.changed.notify_all()

    def _sorted(self) -> list[SessionRow]:
        return sorted(self.rows.values(), key=lambda r: r.data.get("created_at") or 0)

    def render(self) -> None:
        with self.shared.lock:
            rows = self._sorted()
            cells: list[W.Widget] = list(self._header)
            for row in rows:
                cells.extend(row.cells)
            self.table.children = cells
            self._on_render(rows)
            self.shared.changed.notify_all()

    def tick(self) -> None:
        """Count the rows' age and time left down to now (no call to the facade)."""
        with self.shared.lock:
            for row in self.rows.values():
                row.refresh_time()
            self.shared.changed.notify_all()

    def poll_metrics(self) -> None:
        """Ask for the metrics of each ready session (the server scrapes only while asked);
        a facade without `metrics`, or a failing call, leaves the load cell at `-`."""
        ask = getattr(self.shared.facade, "metrics", None)
        if ask is None:
            return
        now = time.monotonic()
        with self.shared.lock:
            ready = [r for r in self.rows.values() if r.state_name == "ready"
                     and self._metrics_pause.get(r.sid, 0.0) <= now]
        for row in ready:
            try:
                m = ask(row.sid)
            except NotFound:
                m = None  # the session went, or the server has no metrics route yet
                self._metrics_pause[row.sid] = now + METRICS_PAUSE_S
            except Exception as exc:  # shown in the cell's tooltip, asked again later
                m = {"available": False, "reason": message(exc)}
                self._metrics_pause[row.sid] = now + METRICS_PAUSE_S
            with self.shared.lock:
                if row.state_name == "ready":
                    row.show_metrics(m)
                self.shared.changed.notify_all()

    def table_text(self) -> str:
        """The session table as plain text: NAME RECIPE TARGET STATE per line."""
        with self.shared.lock:
            return "\n".join(r.text() for r in self._sorted())

    def state_of(self, sid: str) -> str | None:
        with self.shared.lock:
            row = self.rows.get(sid)
            return row.state_name if row else None

    def stop(self, sid: str) -> None:
        row = self.rows.get(sid)
        if row:
            row.stop_button.disabled = True

        def work() -> None:
            try:
                s = self.shared.facade.stop(sid)
                self.shared.say(self.status, f"{s.name}: {s.state}")
            except Exception as exc:
                self.shared.say(self.status, message(exc), error=True)

        self.shared.start(work, "stop")

    def keepalive(self, sid: str) -> None:
        try:
            s = self.shared.facade.keepalive(sid)
            self.shared.say(self.status, f"{s.name}: idle timer reset")
        except Exception as exc:
            self.shared.say(self.status, message(exc), error=True)

    def relaunch(self, sid: str) -> None:
        """A new session like `sid` (same recipe, backend, target, overrides), not waited for:
        its row follows the events like any other."""
        row = self.rows.get(sid)
        old = str(row.data.get("name")) if row else sid

        def work() -> None:
            try:
                s = self.shared.facade.relaunch(sid, wait=False)
            except Exception as exc:
                self.shared.say(self.status, f"relaunching {old}: {message(exc)}", error=True)
                return
            with self.shared.lock:
                self.relaunched.append(s.id)
            self._upsert(s.public())
            self.render()
            self.shared.say(self.status, f"{old} relaunched as {s.name} ({s.state})")

        self.shared.start(work, "relaunch")

    def extend(self, sid: str, duration: str | None = None) -> None:
        """More time for `sid`: `duration`, else the tab's `extend by` field. The target's own
        answer (or refusal) shows in the status line."""
        duration = (duration or self.extend_time.value or "").strip()
        if not duration:
            self.shared.say(self.status, "extend by how much? Fill in `extend by` (e.g. 30m)",
                            error=True)
            return

        def work() -> None:
            try:
                s, said = self.shared.facade.extend(sid, duration)
            except Exception as exc:
                self.shared.say(self.status, message(exc), error=True)
                return
            self._upsert(s.public())
            self.render()
            self.shared.say(self.status, f"{s.name}: {said}")

        self.shared.start(work, "extend")

    def use_in_jupyter_ai(self, sid: str) -> None:
        try:
            done = self.shared.facade.use_in_jupyter_ai(sid)
            self.shared.say(self.status, views.ai_note(done))
        except Exception as exc:
            self.shared.say(self.status, message(exc), error=True)

    def close(self) -> None:
        with self.shared.lock:
            for row in self.rows.values():
                row.close()
