"""One session's cells and action buttons in the control panel's session table."""

from __future__ import annotations

import html
import time
from typing import Any, Protocol

import ipywidgets as W

from ..views import age, badge


class RowActions(Protocol):
    """What a row's buttons do (the panel's sessions tab)."""

    def stop(self, sid: str) -> None: ...
    def keepalive(self, sid: str) -> None: ...
    def show_logs(self, sid: str) -> None: ...
    def chat_with(self, sid: str) -> None: ...
    def use_in_jupyter_ai(self, sid: str) -> None: ...


class SessionRow:
    """A session's name, recipe, target, state badge, age, endpoint and buttons."""

    def __init__(self, sid: str, actions: RowActions) -> None:
        self.sid = sid
        self.data: dict[str, Any] = {}  # the session's public JSON, as events carry it
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
        self.ai_button = W.Button(description="Jupyter AI", layout=W.Layout(width="6.5em"),
                                  tooltip="Use in Jupyter AI: a model in Jupyternaut's picker, "
                                  "through the gateway with a key for this session only")
        self.stop_button.on_click(lambda _: actions.stop(sid))
        self.keepalive_button.on_click(lambda _: actions.keepalive(sid))
        self.logs_button.on_click(lambda _: actions.show_logs(sid))
        self.prompt_button.on_click(lambda _: actions.chat_with(sid))
        self.ai_button.on_click(lambda _: actions.use_in_jupyter_ai(sid))
        self.actions = W.HBox([self.stop_button, self.keepalive_button, self.logs_button,
                               self.prompt_button, self.ai_button])

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
        self.ai_button.disabled = state != "ready" or data.get("api_flavour") != "openai"

    def refresh_age(self) -> None:
        created = self.data.get("created_at")
        self.age.value = age(time.time() - created) if created else "-"

    def text(self) -> str:
        return (f"{self.data.get('name')}  {self.data.get('recipe')}  {self.data.get('target')}  "
                f"{self.state_name}")

    def close(self) -> None:
        for w in [*self.cells, *self.actions.children]:
            w.close()
