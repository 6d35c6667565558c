"""The control panel: launch form, live session table, log viewer and a streaming chat box.

Everything goes through the facade (`api.default()` unless one is given). The session table
follows the facade's event stream (`facade.subscribe`): no polling. Slow calls (launch and
wait, stop, prompts, logs) run on worker threads so the kernel stays responsive; `join()`
waits for them and `wait_for(predicate)` for a state of the panel (tests and notebooks).

Secrets (an SSH key passphrase, a Tapis password, a Hugging Face token) are Password fields
that sync only on Enter or leaving the field; the value is moved into memory at once and the
field cleared, so it never stays in widget state (which a notebook may save). On launch it is
put into this process's environment under the variable the target's configuration names.
"""

from __future__ import annotations

import html
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import ipywidgets as W

from ..magics.views import age, badge

STATE_STEP = {"pending": 1, "starting": 2, "ready": 3}
CHAT_UPDATE_S = 0.1
COLUMNS = ("name", "recipe", "target", "state", "age", "endpoint", "actions")
WIDTHS = "minmax(8em,1.4fr) minmax(7em,1.2fr) 6em 8em 4em minmax(10em,1.6fr) 23em"


class SessionRow:
    """One session's cells and action buttons in the session table."""

    def __init__(self, panel: ControlPanel, sid: str) -> None:
        self.sid = sid
        self.data: dict[str, Any] = {}
        self.name = W.HTML()
        self.recipe = W.Label()
        self.target = W.Label()
        self.state = W.HTML()
        self.age = W.Label()
        self.endpoint = W.Label()
        small = W.Layout(width="5.5em")
        self.stop_button = W.Button(description="stop", button_style="danger", layout=small,
                                    tooltip="stop this session")
        self.keepalive_button = W.Button(description="keepalive", layout=small,
                                         tooltip="reset the idle timer (autostop)")
        self.logs_button = W.Button(description="logs", layout=small, tooltip="show its log")
        self.prompt_button = W.Button(description="prompt", layout=small,
                                      tooltip="chat with it")
        self.stop_button.on_click(lambda _: panel.stop(sid))
        self.keepalive_button.on_click(lambda _: panel.keepalive(sid))
        self.logs_button.on_click(lambda _: panel.show_logs(sid))
        self.prompt_button.on_click(lambda _: panel.chat_with(sid))
        self.actions = W.HBox([self.stop_button, self.keepalive_button, self.logs_button,
                               self.prompt_button])

    @property
    def cells(self) -> list[W.Widget]:
        return [self.name, self.recipe, self.target, self.state, self.age, self.endpoint,
                self.actions]

    @property
    def state_name(self) -> str:
        return str(self.data.get("state", ""))

    def update(self, data: dict[str, Any]) -> None:
        self.data = data
        state = str(data.get("state"))
        self.name.value = (f'<span title="id {html.escape(self.sid)}">'
                           f"{html.escape(str(data.get('name')))}</span>")
        self.recipe.value = str(data.get("recipe", ""))
        self.target.value = str(data.get("target", ""))
        reason = str(data.get("reason") or "")
        self.state.value = (f'<span title="{html.escape(reason)}">'
                            f"{badge(state, bool(data.get('unreachable')))}</span>")
        self.refresh_age()
        endpoints = data.get("endpoints") or []
        self.endpoint.value = endpoints[0] if endpoints else "-"
        ended = state in ("stopped", "failed", "timeout")
        self.stop_button.disabled = ended or state == "stopping"
        self.keepalive_button.disabled = ended
        self.prompt_button.disabled = state != "ready"

    def refresh_age(self) -> None:
        created = self.data.get("created_at")
        self.age.value = age(time.time() - created) if created else "-"

    def text(self) -> str:
        return (f"{self.data.get('name')}  {self.data.get('recipe')}  {self.data.get('target')}  "
                f"{self.state_name}")

    def close(self) -> None:
        for w in [*self.cells, *self.actions.children]:
            w.close()


class ControlPanel:
    """The panel's widgets (attributes, for scripting and tests) and what they do."""

    def __init__(self, facade: Any = None, *, subscribe: bool = True) -> None:
        if facade is None:
            from .. import api

            facade = api.default()
        self.facade = facade
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._workers: list[threading.Thread] = []
        self._held: dict[str, str] = {}  # secrets typed in, by environment variable name
        self.rows: dict[str, SessionRow] = {}
        self.history: list[dict[str, str]] = []
        self.last_answer: str | None = None
        self.launched: list[str] = []
        self.errors: list[str] = []

        self._recipes = {r["name"]: r for r in facade.recipes()}
        self._targets = {t["name"]: t for t in facade.targets()}
        self.status = W.HTML()  # outcomes of actions (stop, keepalive) and errors
        self._build_launch_form()
        self._build_sessions()
        self._build_logs()
        self._build_chat()
        self._render_table()
        self.tabs = W.Tab(children=[self.sessions_box, self.logs_box, self.chat_box],
                          titles=("Sessions", "Logs", "Chat"))
        self.widget = W.VBox([W.HTML("<b>hpcserve</b> — launch and prompt AI serving sessions"),
                              self.launch_box, self.tabs])
        live = subscribe and hasattr(facade, "subscribe")
        self._subscription = facade.subscribe(self._on_event) if live else None
        if self._subscription is None:  # no event stream: the table changes on `refresh`
            self.refresh()

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
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        with self._lock:
            for row in self.rows.values():
                row.close()
        self.widget.close()

    # ------------------------------------------------------------------ launch form

    def _build_launch_form(self) -> None:
        wide = W.Layout(width="22em")
        names = sorted(self._recipes)
        self.recipe = W.Dropdown(options=names, value=_default_recipe(self._recipes),
                                 description="recipe", layout=wide)
        self.recipe_info = W.HTML()
        self.backend = W.Dropdown(options=[], description="backend", layout=wide)
        targets = sorted(self._targets)
        self.target = W.Dropdown(options=targets, value="local" if "local" in targets else
                                 (targets[0] if targets else None), description="target",
                                 layout=wide)
        short = W.Layout(width="11em")
        self.gpus = W.BoundedIntText(min=0, max=4096, description="GPUs/node", layout=short)
        self.nodes = W.BoundedIntText(min=1, max=4096, value=1, description="nodes",
                                      layout=short)
        self.time = W.Text(description="time", placeholder="e.g. 2h", layout=short)
        self.replicas = W.BoundedIntText(min=1, max=4096, value=1, description="replicas",
                                         layout=short)
        self.session_name = W.Text(description="name", placeholder="default: RECIPE-N",
                                   layout=wide)
        self.secrets_box = W.VBox()
        self.secret_fields: dict[str, W.Password] = {}
        self.launch_button = W.Button(description="Launch", button_style="primary",
                                      icon="rocket")
        self.progress = W.IntProgress(min=0, max=3, value=0, description="progress",
                                      bar_style="info")
        self.launch_status = W.HTML()
        self.recipe.observe(lambda _: self._recipe_changed(), "value")
        self.target.observe(lambda _: self._target_changed(), "value")
        self.launch_button.on_click(lambda _: self.launch())
        self._recipe_changed()
        self._target_changed()
        self.launch_box = W.VBox([
            W.HBox([self.recipe, self.backend, self.target]), self.recipe_info,
            W.HBox([self.gpus, self.nodes, self.time, self.replicas]),
            self.session_name, self.secrets_box,
            W.HBox([self.launch_button, self.progress, self.launch_status]),
        ])

    def _recipe_changed(self) -> None:
        r = self._recipes.get(self.recipe.value)
        if not r:
            return
        self.backend.options = list(r["backends"])
        self.backend.value = r["backends"][0] if r["backends"] else None
        res = r.get("resources") or {}
        self.gpus.value = int(res.get("gpus") or 0)
        self.nodes.value = int(res.get("nodes") or 1)
        self.time.value = str(res.get("time") or "")
        replicas = r.get("replicas") or 1
        self.replicas.value = int(replicas if isinstance(replicas, int) else 1)
        model = f" — model <code>{html.escape(str(r['model']))}</code>" if r.get("model") else ""
        self.recipe_info.value = (f"<small>{html.escape(r.get('description') or '')} "
                                  f"({html.escape(str(r.get('category')))}){model}</small>")

    def _target_changed(self) -> None:
        """One Password field per secret the chosen target reads from the environment."""
        for pw in self.secret_fields.values():
            pw.close()
        self.secret_fields = {}
        fields: list[dict[str, Any]] = []
        if self.target.value and hasattr(self.facade, "target_secrets"):
            try:
                fields = self.facade.target_secrets(self.target.value)
            except Exception as exc:  # a broken target config shows at launch, with its hint
                self._say(f"target {self.target.value}: {_message(exc)}", error=True,
                          launch=True)
        for f in fields:
            env = f["env"]
            pw = W.Password(description=f["label"], continuous_update=False,
                            placeholder=_secret_placeholder(env, f.get("is_set"), held=False),
                            style={"description_width": "initial"}, layout=W.Layout(width="30em"))
            pw.observe(lambda change, env=env, pw=pw: self._hold(env, pw, change["new"]), "value")
            self.secret_fields[env] = pw
        self.secrets_box.children = list(self.secret_fields.values())

    def _hold(self, env: str, field: W.Password, value: str) -> None:
        if not value:
            return
        self._held[env] = value
        field.value = ""  # never left in widget state (a saved notebook may keep that)
        field.placeholder = _secret_placeholder(env, True, held=True)

    def overrides(self) -> dict[str, Any]:
        """The resource fields that differ from the recipe's own values."""
        r = self._recipes[self.recipe.value]
        res = r.get("resources") or {}
        replicas = r.get("replicas") if isinstance(r.get("replicas"), int) else 1
        out: dict[str, Any] = {}
        if self.gpus.value != int(res.get("gpus") or 0):
            out["gpus"] = self.gpus.value
        if self.nodes.value != int(res.get("nodes") or 1):
            out["nodes"] = self.nodes.value
        if self.time.value.strip() and self.time.value.strip() != str(res.get("time") or ""):
            out["time"] = self.time.value.strip()
        if self.replicas.value != replicas:
            out["replicas"] = self.replicas.value
        return out

    def launch(self) -> None:
        """What the Launch button does: launch on a worker thread, progress until ready."""
        recipe, backend, target = self.recipe.value, self.backend.value, self.target.value
        name = self.session_name.value.strip() or None
        overrides = self.overrides()
        secrets = {env: self._held.pop(env) for env in list(self._held)
                   if env in self.secret_fields}  # those the chosen target reads
        if secrets:
            try:
                self._apply_secrets(target, secrets)
            except Exception as exc:
                self._say(_message(exc), error=True, launch=True)
                return
        self.launch_button.disabled = True
        self.progress.value, self.progress.bar_style = 0, "info"
        self._say(f"launching {recipe} on {target}…", launch=True)

        def work() -> None:
            start = time.monotonic()

            def progress(s: Any) -> None:
                self._show_progress(s, time.monotonic() - start)

            try:
                s = self.facade.launch(recipe, backend=backend, on=target, name=name,
                                       wait=False, **overrides)
                with self._lock:
                    self.launched.append(s.id)
                progress(s)
                s = self.facade.wait(s.id, progress=progress)
                progress(s)
            except Exception as exc:
                self.progress.bar_style = "danger"
                self._say(_message(exc), error=True, launch=True)
            finally:
                self.launch_button.disabled = False

        self._start(work, "launch")

    def _apply_secrets(self, target: str, secrets: dict[str, str]) -> None:
        """Hand typed secrets to the facade (it puts them where the target reads them)."""
        if hasattr(self.facade, "set_target_secrets"):
            self.facade.set_target_secrets(target, secrets)
        else:
            os.environ.update(secrets)
        for env in secrets:
            self.secret_fields[env].placeholder = _secret_placeholder(env, True, held=False)

    def _show_progress(self, s: Any, elapsed: float) -> None:
        state = str(s.state)
        self.progress.value = STATE_STEP.get(state, 3 if s.state.terminal else 0)
        self.progress.bar_style = ("success" if state == "ready" else
                                   "danger" if s.state.terminal else "info")
        reason = f" {html.escape(s.reason)}" if s.reason and s.reason != "serving" else ""
        self.launch_status.value = (f"<code>{html.escape(s.name)}</code> "
                                    f"{badge(state, s.unreachable)}{reason} "
                                    f"<small>{elapsed:.1f} s</small>")

    # ------------------------------------------------------------------ session table

    def _build_sessions(self) -> None:
        self.table = W.GridBox(layout=W.Layout(grid_template_columns=WIDTHS,
                                               grid_gap="2px 8px", align_items="center"))
        self._header = [W.HTML(f"<b>{c}</b>") for c in COLUMNS]
        self.refresh_button = W.Button(description="refresh", icon="refresh",
                                       tooltip="re-read the sessions (the table also follows "
                                       "every change as it happens)")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.sessions_box = W.VBox([self.table, W.HBox([self.refresh_button, self.status])])

    def refresh(self) -> None:
        """Re-read live sessions (and keep showing ended ones already in the table)."""
        for s in self.facade.sessions(live_only=True):
            self._upsert(s.public())
        with self._lock:
            for row in self.rows.values():
                row.refresh_age()
        self._render_table()

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "snapshot":
            for data in event.get("sessions", []):
                self._upsert(data)
        elif kind == "resync":
            self.refresh()
            return
        elif event.get("session"):
            self._upsert(event["session"])
        self._render_table()

    def _upsert(self, data: dict[str, Any]) -> None:
        sid = data["id"]
        with self._lock:
            row = self.rows.get(sid)
            if row is None:
                row = self.rows[sid] = SessionRow(self, sid)
            row.update(data)
            self._changed.notify_all()

    def _render_table(self) -> None:
        with self._lock:
            rows = sorted(self.rows.values(), key=lambda r: r.data.get("created_at") or 0)
            cells: list[W.Widget] = list(self._header)
            for row in rows:
                cells.extend(row.cells)
            self.table.children = cells
            choices = [(f"{r.data.get('name')} ({r.state_name})", r.sid) for r in rows]
            _set_options(self.log_session, choices)
            _set_options(self.chat_session, [c for c, r in zip(choices, rows, strict=True)
                                             if r.state_name == "ready"])
            self._changed.notify_all()

    def table_text(self) -> str:
        """The session table as plain text: NAME RECIPE TARGET STATE per line."""
        with self._lock:
            rows = sorted(self.rows.values(), key=lambda r: r.data.get("created_at") or 0)
            return "\n".join(r.text() for r in rows)

    def state_of(self, sid: str) -> str | None:
        with self._lock:
            row = self.rows.get(sid)
            return row.state_name if row else None

    def stop(self, sid: str) -> None:
        row = self.rows.get(sid)
        if row:
            row.stop_button.disabled = True

        def work() -> None:
            try:
                s = self.facade.stop(sid)
                self._say(f"{s.name}: {s.state}")
            except Exception as exc:
                self._say(_message(exc), error=True)

        self._start(work, "stop")

    def keepalive(self, sid: str) -> None:
        try:
            s = self.facade.keepalive(sid)
            self._say(f"{s.name}: idle timer reset")
        except Exception as exc:
            self._say(_message(exc), error=True)

    # ------------------------------------------------------------------ logs

    def _build_logs(self) -> None:
        self.log_session = W.Dropdown(options=[], description="session")
        self.log_tail = W.BoundedIntText(value=200, min=0, max=100000, description="lines",
                                         layout=W.Layout(width="11em"))
        self.log_refresh = W.Button(description="show", icon="refresh")
        self.log_text = W.Textarea(disabled=True, placeholder="the engine's log",
                                   layout=W.Layout(width="100%", height="18em"))
        self.log_refresh.on_click(lambda _: self.load_logs())
        self.logs_box = W.VBox([W.HBox([self.log_session, self.log_tail, self.log_refresh]),
                                self.log_text])

    def show_logs(self, sid: str) -> None:
        """What a row's `logs` button does: select the session, open the tab, load the log."""
        with self._lock:
            if sid in [v for _, v in self.log_session.options]:
                self.log_session.value = sid
        self.tabs.selected_index = 1
        self.load_logs(sid)

    def load_logs(self, sid: str | None = None) -> None:
        sid = sid or self.log_session.value
        if not sid:
            return
        tail = self.log_tail.value or None

        def work() -> None:
            try:
                self.log_text.value = self.facade.logs(sid, tail=tail)
            except Exception as exc:
                self.log_text.value = f"(no log: {_message(exc)})"

        self._start(work, "logs")

    # ------------------------------------------------------------------ chat

    def _build_chat(self) -> None:
        self.chat_session = W.Dropdown(options=[], description="session")
        self.chat_session.observe(lambda _: self.clear_chat(), "value")
        self.max_tokens = W.BoundedIntText(value=256, min=1, max=32768, description="max tokens",
                                           layout=W.Layout(width="13em"),
                                           style={"description_width": "initial"})
        self.temperature = W.BoundedFloatText(value=0.7, min=0.0, max=2.0, step=0.1,
                                              description="temperature",
                                              layout=W.Layout(width="13em"),
                                              style={"description_width": "initial"})
        self.chat_input = W.Textarea(placeholder="Ask something…",
                                     layout=W.Layout(width="100%", height="5em"))
        self.send_button = W.Button(description="Send", button_style="primary", icon="paper-plane")
        self.clear_button = W.Button(description="Clear", tooltip="start a new conversation")
        self.chat_log = W.HTML(layout=W.Layout(width="100%"))
        self.send_button.on_click(lambda _: self.send())
        self.clear_button.on_click(lambda _: self.clear_chat())
        self.chat_box = W.VBox([
            W.HBox([self.chat_session, self.max_tokens, self.temperature]), self.chat_log,
            self.chat_input, W.HBox([self.send_button, self.clear_button])])

    def chat_with(self, sid: str) -> None:
        """What a row's `prompt` button does: select the session in the chat tab."""
        with self._lock:
            if sid in [v for _, v in self.chat_session.options]:
                self.chat_session.value = sid
        self.tabs.selected_index = 2

    def clear_chat(self) -> None:
        self.history = []
        self.last_answer = None
        self._render_chat()

    def send(self) -> None:
        """What Send does: stream the answer to the input (with the conversation so far)."""
        sid, text = self.chat_session.value, self.chat_input.value.strip()
        if not sid:
            self._render_chat(note="no ready session to talk to: launch one first")
            return
        if not text:
            return
        self.chat_input.value = ""
        self.history.append({"role": "user", "content": text})
        self.send_button.disabled = True
        params = {"max_tokens": self.max_tokens.value, "temperature": self.temperature.value}
        messages = list(self.history)

        def work() -> None:
            parts: list[str] = []
            last = 0.0
            try:
                for delta in self.facade.stream(sid, messages, **params):
                    parts.append(delta)
                    if time.monotonic() - last >= CHAT_UPDATE_S:
                        last = time.monotonic()
                        self._render_chat(partial="".join(parts))
                answer = "".join(parts)
                self.history.append({"role": "assistant", "content": answer})
                self.last_answer = answer
                self._render_chat()
            except Exception as exc:
                self.history.pop()  # the question was not answered: let it be asked again
                self.chat_input.value = text
                self._render_chat(note=_message(exc))
            finally:
                self.send_button.disabled = False

        self._start(work, "chat")

    def _render_chat(self, partial: str | None = None, note: str | None = None) -> None:
        parts = []
        for m in self.history:
            who = "you" if m["role"] == "user" else "model"
            parts.append(f'<div style="margin:2px 0"><b>{who}:</b> '
                         f'<span style="white-space:pre-wrap">{html.escape(m["content"])}'
                         "</span></div>")
        if partial is not None:
            parts.append(f'<div style="margin:2px 0"><b>model:</b> <span style="white-space:'
                         f'pre-wrap">{html.escape(partial)} ▌</span></div>')
        if note:
            parts.append(f'<div style="color:#c62828">{html.escape(note)}</div>')
        self.chat_log.value = "".join(parts)

    # ------------------------------------------------------------------ plumbing

    def _say(self, message: str, *, error: bool = False, launch: bool = False) -> None:
        """Show an outcome under the session table (or next to Launch); errors in red."""
        if error:
            self.errors.append(message)
        colour = "#c62828" if error else "inherit"
        (self.launch_status if launch else self.status).value = (
            f'<span style="color:{colour}">{html.escape(message)}</span>')

    def _start(self, fn: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=fn, name=f"hpcserve-panel-{name}", daemon=True)
        with self._lock:
            self._workers = [w for w in self._workers if w.is_alive()]
            self._workers.append(t)
        t.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the panel's worker threads (launches, stops, prompts); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                alive = [w for w in self._workers if w.is_alive()]
            if not alive:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            alive[0].join(left)

    def wait_for(self, predicate: Callable[[ControlPanel], bool],
                 timeout: float = 60.0) -> bool:
        """Block until `predicate(panel)` holds (re-checked on every table change)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 1.0))
        return True


def _message(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    hint = getattr(exc, "hint", None)
    return f"{message} (hint: {hint})" if hint else message


def _secret_placeholder(env: str, is_set: bool | None, *, held: bool) -> str:
    if held:
        return f"held in memory; sets ${env} at launch (never saved)"
    if is_set:
        return f"${env} is set in this kernel (type to replace; never saved)"
    return f"sets ${env} for this kernel at launch (never saved)"


def _default_recipe(recipes: dict[str, dict[str, Any]]) -> str | None:
    """A recipe that runs anywhere (inference, no GPU) if there is one, else the first."""
    for name in sorted(recipes):
        r = recipes[name]
        if r.get("category") == "inference" and not (r.get("resources") or {}).get("gpus"):
            return name
    return sorted(recipes)[0] if recipes else None


def _set_options(dropdown: W.Dropdown, options: list[tuple[str, str]]) -> None:
    """New options, keeping the selection when it is still offered."""
    if list(dropdown.options) == options:
        return
    current = dropdown.value
    dropdown.options = options
    values = [v for _, v in options]
    if current in values:
        dropdown.value = current
    elif values and dropdown.value is None:
        dropdown.value = values[-1]
