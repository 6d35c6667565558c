"""One session's cells and action buttons in the control panel's session table."""

from __future__ import annotations

import html
import time
from typing import Any, Protocol

import ipywidgets as W

from ..views import AMBER, age, badge

try:  # the metrics package draws the text sparkline; without it the numbers show alone
    from ..metrics.sparkline import sparkline as _sparkline
except ImportError:  # pragma: no cover - only when the metrics package is absent
    _sparkline = None

EXPIRING_S = 600  # under this many seconds left, the countdown turns amber
SPARK_WIDTH = 24  # history points the text sparkline shows


class RowActions(Protocol):
    """What a row's buttons do (the panel's sessions tab)."""

    def stop(self, sid: str) -> None: ...
    def keepalive(self, sid: str) -> None: ...
    def show_logs(self, sid: str) -> None: ...
    def chat_with(self, sid: str) -> None: ...
    def use_in_jupyter_ai(self, sid: str) -> None: ...
    def relaunch(self, sid: str) -> None: ...
    def extend(self, sid: str) -> None: ...


def left_text(seconds: float) -> str:
    """Time left as the countdown shows it: to the second within the last ten minutes (so it
    visibly runs), as the tables do (45s, 12m, 3h05m) otherwise."""
    s = max(0, int(seconds))
    if 60 <= s < EXPIRING_S:
        return f"{s // 60}m {s % 60:02d}s"
    return age(s)


def time_left_html(left: float | None, ends_at: str | None, idle: float | None) -> str:
    """The countdown cell: time left (amber with class `hpcserve-expiring` under ten minutes),
    the end time and the idle stop in its tooltip, and the idle stop alone when nothing else
    limits the session."""
    tip = []
    if ends_at:
        tip.append(f"ends at {ends_at} (extend it, or relaunch it to carry on)")
    if idle is not None:
        tip.append(f"idle stop in {age(idle)} without requests (keepalive resets it)")
    title = html.escape("; ".join(tip), quote=True)
    if left is None:
        text = f"idle {age(idle)}" if idle is not None else "-"
        return f'<span class="hpcserve-left" title="{title}">{html.escape(text)}</span>'
    if left < EXPIRING_S:
        return (f'<span class="hpcserve-left hpcserve-expiring" title="{title}" '
                f'style="color:{AMBER};font-weight:bold">{html.escape(left_text(left))}</span>')
    return f'<span class="hpcserve-left" title="{title}">{html.escape(left_text(left))}</span>'


def metrics_html(m: dict[str, Any] | None) -> str:
    """The load cell of a ready session: a sparkline of tokens/s over the last minutes and the
    numbers now; `-` without metrics (the reason in the tooltip)."""
    if not m:
        return "-"
    if not m.get("available"):
        reason = html.escape(str(m.get("reason") or "the engine gives no metrics"), quote=True)
        return f'<span class="hpcserve-no-metrics" title="{reason}">no metrics</span>'
    history = m.get("history") or []
    tps = m.get("generation_tokens_per_s")
    parts = [f"{tps:.1f} tok/s" if isinstance(tps, int | float) else "- tok/s",
             f"{m.get('requests_running', '-')} run", f"{m.get('requests_waiting', '-')} wait"]
    kv = m.get("kv_cache_usage")
    if isinstance(kv, int | float):
        parts.append(f"KV {round(kv * 100)}%")
    gpu_info = m.get("gpus") or {}
    gpus = (gpu_info.get("gpus") or []) if gpu_info.get("available") else []
    tip = ["tokens/s over the last minutes"]
    for g in gpus:
        tip.append(f"GPU {g.get('index')} {g.get('name')}: {g.get('utilization_pct')}%, "
                   f"{g.get('memory_used_mib')} / {g.get('memory_total_mib')} MiB")
    if gpus:
        util = [g.get("utilization_pct") or 0 for g in gpus]
        parts.append(f"GPU {round(sum(util) / len(util))}%")
    spark = ""
    if _sparkline is not None:
        spark = _sparkline([p[1] for p in history if len(p) >= 2], width=SPARK_WIDTH)
    title = html.escape("\n".join(tip), quote=True)
    return (f'<span class="hpcserve-metrics" title="{title}">'
            f'<span class="hpcserve-sparkline" style="font-family:monospace">'
            f"{html.escape(spark)}</span> {html.escape(' · '.join(parts))}</span>")


class SessionRow:
    """A session's name, recipe, target, state badge, age, time left, endpoint, load and
    buttons."""

    def __init__(self, sid: str, actions: RowActions) -> None:
        self.sid = sid
        self.data: dict[str, Any] = {}  # the session's public JSON, as events carry it
        self.received = time.monotonic()  # when `data` arrived: the countdowns run from it
        self.metrics: dict[str, Any] | None = None  # the last metrics answer (ready only)
        self.name = W.HTML()
        self.recipe = W.Label()
        self.target = W.Label()
        self.state = W.HTML()
        self.age = W.Label()
        self.left = W.HTML()
        self.endpoint = W.Label()
        self.load = W.HTML(value="-")
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
        self.relaunch_button = W.Button(description="relaunch", layout=small,
                                        tooltip="a new session with the same recipe, backend, "
                                        "target and overrides (the next-numbered name)")
        self.extend_button = W.Button(description="extend", layout=small,
                                      tooltip="more time, by the duration beside the table's "
                                      "refresh button (where the target allows)")
        self.stop_button.on_click(lambda _: actions.stop(sid))
        self.keepalive_button.on_click(lambda _: actions.keepalive(sid))
        self.logs_button.on_click(lambda _: actions.show_logs(sid))
        self.prompt_button.on_click(lambda _: actions.chat_with(sid))
        self.ai_button.on_click(lambda _: actions.use_in_jupyter_ai(sid))
        self.relaunch_button.on_click(lambda _: actions.relaunch(sid))
        self.extend_button.on_click(lambda _: actions.extend(sid))
        self.actions = W.HBox([self.stop_button, self.keepalive_button, self.logs_button,
                               self.prompt_button, self.ai_button, self.extend_button,
                               self.relaunch_button], layout=W.Layout(flex_flow="row wrap"))

    @property
    def cells(self) -> list[W.Widget]:
        return [self.name, self.recipe, self.target, self.state, self.age, self.left,
                self.endpoint, self.load, self.actions]

    @property
    def state_name(self) -> str:
        return str(self.data.get("state", ""))

    @property
    def ended(self) -> bool:
        return self.state_name in ("stopped", "failed", "timeout")

    def update(self, data: dict[str, Any]) -> None:
        self.data = data
        self.received = time.monotonic()
        state = str(data.get("state"))
        self.name.value = (f'<span title="id {html.escape(self.sid)}">'
                           f"{html.escape(str(data.get('name')))}</span>")
        self.recipe.value = str(data.get("recipe", ""))
        self.target.value = str(data.get("target", ""))
        ended = self.ended
        reason = str(data.get("reason") or "")
        degraded = bool(data.get("degraded")) and not ended
        if degraded:  # the flag with its reason: the engine stopped answering health checks
            reason = str(data.get("degraded_reason") or "no answer to health checks")
        marked = ' class="hpcserve-degraded"' if degraded else ""
        self.state.value = (f'<span{marked} title="{html.escape(reason, quote=True)}">'
                            f"{badge(state, bool(data.get('unreachable')), degraded)}</span>")
        self.refresh_time()
        endpoints = data.get("endpoints") or []
        self.endpoint.value = endpoints[0] if endpoints else "-"
        self.stop_button.disabled = ended or state == "stopping"
        self.keepalive_button.disabled = ended
        self.extend_button.disabled = ended or state == "stopping"
        self.prompt_button.disabled = state != "ready"
        self.ai_button.disabled = state != "ready" or data.get("api_flavour") != "openai"
        if state != "ready":
            self.show_metrics(None)

    def seconds_left(self) -> float | None:
        """Time left now: the server's `time_left_s`, counted down since it arrived."""
        left = self.data.get("time_left_s")
        if left is None or self.ended:
            return None
        return max(0.0, float(left) - (time.monotonic() - self.received))

    def refresh_time(self) -> None:
        """The age and the countdowns as of now (the panel's ticker calls this)."""
        created = self.data.get("created_at")
        self.age.value = age(time.time() - created) if created else "-"
        idle = self.data.get("idle_stop_in_s")
        if idle is not None and (self.state_name != "ready"):
            idle = None
        if idle is not None:
            idle = max(0.0, float(idle) - (time.monotonic() - self.received))
        ends_at = None if self.ended else self.data.get("ends_at")
        self.left.value = time_left_html(self.seconds_left(), ends_at, idle)

    @property
    def expiring(self) -> bool:
        """Whether the countdown shows amber (under ten minutes left)."""
        left = self.seconds_left()
        return left is not None and left < EXPIRING_S

    def show_metrics(self, m: dict[str, Any] | None) -> None:
        """The load cell from a metrics answer (None: none to show)."""
        self.metrics = m
        self.load.value = metrics_html(m)

    def text(self) -> str:
        return (f"{self.data.get('name')}  {self.data.get('recipe')}  {self.data.get('target')}  "
                f"{self.state_name}")

    def close(self) -> None:
        for w in [*self.cells, *self.actions.children]:
            w.close()
