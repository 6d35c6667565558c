"""The control panel's Sessions tab: a live table of sessions that follows the facade's event
stream (no polling), with stop and keepalive per row and a status line for their outcomes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as W

from .. import views
from .session_row import SessionRow
from .shared import Shared, message

COLUMNS = ("name", "recipe", "target", "state", "age", "endpoint", "actions")
WIDTHS = "minmax(8em,1.4fr) minmax(7em,1.2fr) 6em 8em 4em minmax(10em,1.6fr) 30em"


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
        self.status = W.HTML()  # outcomes of actions (stop, keepalive) and errors
        self.table = W.GridBox(layout=W.Layout(grid_template_columns=WIDTHS,
                                               grid_gap="2px 8px", align_items="center"))
        self._header = [W.HTML(f"<b>{c}</b>") for c in COLUMNS]
        self.refresh_button = W.Button(description="refresh", icon="refresh",
                                       tooltip="re-read the sessions (the table also follows "
                                       "every change as it happens)")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.box = W.VBox([self.table, W.HBox([self.refresh_button, self.status])])

    def refresh(self) -> None:
        """Re-read live sessions (and keep showing ended ones already in the table)."""
        for s in self.shared.facade.sessions(live_only=True):
            self._upsert(s.public())
        with self.shared.lock:
            for row in self.rows.values():
                row.refresh_age()
        self.render()

    def on_event(self, event: dict[str, Any]) -> None:
        """One event of the facade's stream (a snapshot, a session's change, a resync)."""
        kind = event.get("type")
        if kind == "snapshot":
            for data in event.get("sessions", []):
                self._upsert(data)
        elif kind == "resync":
            self.refresh()
            return
        elif event.get("session"):
            self._upsert(event["session"])
        self.render()

    def _upsert(self, data: dict[str, Any]) -> None:
        sid = data["id"]
        with self.shared.lock:
            row = self.rows.get(sid)
            if row is None:
                row = self.rows[sid] = SessionRow(sid, self)
            row.update(data)
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
