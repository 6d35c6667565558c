"""What the front ends show: session and catalog tables with coloured state badges as HTML for
notebooks (magics, control panel), aligned plain text for terminals (the `hpcserve` CLI, IPython).
One module for all of them, so a column or a state's wording is decided once. Pure Python: no
IPython or ipywidgets imports, so the CLI loads it without Jupyter.

Each view keeps the objects it shows (`SessionList` is a list of Session), so a cell's result is
also data: `%serve status` returns the sessions, `%serve recipes` the recipe summaries.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from IPython.lib.pretty import PrettyPrinter

    from .sessions import Session

STATE_COLOURS = {
    "pending": "#8d6e00", "starting": "#1565c0", "ready": "#2e7d32", "stopping": "#ef6c00",
    "stopped": "#616161", "failed": "#c62828", "timeout": "#6a1b9a",
}


def badge(state: str, unreachable: bool = False, degraded: bool = False) -> str:
    """An HTML badge for a session state, coloured by state."""
    colour = STATE_COLOURS.get(str(state), "#455a64")
    text = html.escape(str(state)) + (" (unreachable)" if unreachable else "") + (
        " (degraded)" if degraded else "")
    return (f'<span class="hpcserve-state hpcserve-{html.escape(str(state))}" '
            f'style="background:{colour};color:#fff;border-radius:4px;padding:1px 6px;'
            f'font-size:90%;white-space:nowrap">{text}</span>')


def age(seconds: float) -> str:
    """A duration as a table shows it: 45s, 12m, 3h05m."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def text_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Columns aligned with two spaces between them, the header first, no trailing blanks."""
    lines = [list(header), *([str(c) for c in row] for row in rows)]
    widths = [max(len(x) for x in col) for col in zip(*lines, strict=True)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def html_table(header: Sequence[str], rows: Iterable[Sequence[str]], *,
               raw_columns: frozenset[int] = frozenset()) -> str:
    """An HTML table; cells are escaped except in `raw_columns` (already HTML)."""
    head = "".join(f'<th style="text-align:left">{html.escape(h)}</th>' for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td style="text-align:left">{c if i in raw_columns else html.escape(str(c))}</td>'
            for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return (f'<table class="hpcserve-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


class _View:
    """Plain text for terminals (repr and IPython's pretty printer), HTML for notebooks."""

    def text(self) -> str:
        raise NotImplementedError

    def html(self) -> str:
        return f"<pre>{html.escape(self.text())}</pre>"

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, p: PrettyPrinter, cycle: bool) -> None:
        p.text(self.text())

    def _repr_html_(self) -> str:
        return self.html()


def _state(s: Session) -> str:
    return str(s.state) + (" (unreachable)" if s.unreachable else "") + (
        " (degraded)" if s.degraded else "")


def time_left(s: Session, now: float | None = None) -> str:
    """What TIME_LEFT (squeue's header for it) shows: the time to the nearer limit, `-` when
    none applies."""
    left = s.timing(now)["time_left_s"]
    return "-" if left is None else age(left)


SOON_S = 600  # under ten minutes left, the front ends turn amber


def soon(s: Session, now: float | None = None, within: float = SOON_S) -> bool:
    """Whether a live session ends within `within` seconds (the front ends turn amber)."""
    left = s.timing(now)["time_left_s"]
    return left is not None and left < within


class SessionList(list, _View):
    """Sessions as a table: id, name, recipe, backend, target, state badge, age, time left,
    endpoint."""

    HEADER = ("ID", "NAME", "RECIPE", "BACKEND", "TARGET", "STATE", "AGE", "TIME_LEFT",
              "ENDPOINT")

    def __init__(self, sessions: Iterable[Session] = (), empty: str = "no sessions") -> None:
        super().__init__(sessions)
        self.empty = empty

    def _rows(self, badges: bool) -> list[list[str]]:
        now = time.time()
        return [[s.id, s.name, s.recipe, s.backend, s.target,
                 badge(str(s.state), s.unreachable, s.degraded) if badges else _state(s),
                 age(now - s.created_at), _left_cell(s, now, badges),
                 s.endpoints[0] if s.endpoints else "-"]
                for s in self]

    def text(self) -> str:
        return text_table(self.HEADER, self._rows(False)) if self else self.empty

    def html(self) -> str:
        if not self:
            return f"<i>{html.escape(self.empty)}</i>"
        return html_table(self.HEADER, self._rows(True), raw_columns=frozenset({5, 7}))

    __repr__ = _View.__repr__
    _repr_pretty_ = _View._repr_pretty_


AMBER = "#b26a00"


def _left_cell(s: Session, now: float, html_cell: bool) -> str:
    left = s.timing(now)["time_left_s"]  # once: the text and the colour from the same value
    text = "-" if left is None else age(left)
    if not html_cell:
        return text
    if left is not None and left < SOON_S:
        return (f'<span class="hpcserve-expiring" style="color:{AMBER};font-weight:bold">'
                f"{html.escape(text)}</span>")
    return html.escape(text)


def metrics_pairs(m: dict[str, Any]) -> list[tuple[str, str]]:
    """The metrics block of `status ID` / `%serve status ID`: serving numbers and GPU use."""
    from .metrics import sparkline

    pairs = []
    if m.get("available"):
        rate = m.get("generation_tokens_per_s")
        spark = sparkline([p[1] for p in m.get("history") or []], width=30)
        pairs.append(("requests", f"{m.get('requests_running') or 0} running, "
                                  f"{m.get('requests_waiting') or 0} waiting"))
        pairs.append(("tokens/s", ("-" if rate is None else f"{rate:g}") + " generated (last "
                      "minute)" + (f"  {spark}" if spark.strip() else "")))
        pairs.append(("tokens", f"{m.get('prompt_tokens_total') or 0} prompt, "
                                f"{m.get('generation_tokens_total') or 0} generated"))
        if m.get("kv_cache_usage") is not None:
            pairs.append(("kv cache", f"{m['kv_cache_usage'] * 100:.0f}% used"))
    else:
        pairs.append(("metrics", m.get("reason") or "none"))
    gpus = m.get("gpus") or {}
    for g in gpus.get("gpus") or []:
        util = "-" if g.get("utilization_pct") is None else f"{g['utilization_pct']:.0f}%"
        mem = ("-" if g.get("memory_used_mib") is None else
               f"{g['memory_used_mib'] / 1024:.1f}/{(g.get('memory_total_mib') or 0) / 1024:.1f}"
               " GiB")
        pairs.append((f"gpu {g.get('index')}", f"{g.get('name')}: {util} busy, {mem}"))
    if not gpus.get("gpus") and gpus.get("reason"):
        pairs.append(("gpus", str(gpus["reason"])))
    return pairs


class SessionDetail(_View):
    """One session in full; an ended session also shows its reason and the engine's last lines;
    a ready one its live metrics when given."""

    FIELDS = ("id", "name", "recipe", "backend", "target", "state", "reason", "model",
              "endpoints", "owner")

    def __init__(self, session: Session, metrics: dict[str, Any] | None = None) -> None:
        self.session = session
        self.metrics = metrics

    def _pairs(self) -> list[tuple[str, str]]:
        s = self.session
        info = s.public()
        pairs = [(k, ", ".join(info[k]) if k == "endpoints" else str(info[k]))
                 for k in self.FIELDS]
        now = time.time()
        pairs.append(("age", age(now - s.created_at)))
        timing = s.timing(now)
        if timing["time_left_s"] is not None:
            limit = timing["time_limit_s"]
            pairs.append(("time left", age(timing["time_left_s"]) + (
                f" of {age(limit)}" if limit else "") + f" (ends {timing['ends_at']})"))
        elif timing["time_limit_s"] and s.state.live:
            pairs.append(("time limit", age(timing["time_limit_s"]) + " (from its start)"))
        if timing["idle_stop_in_s"] is not None:
            pairs.append(("idle stop", f"in {age(timing['idle_stop_in_s'])} without requests"))
        if s.unreachable:
            pairs.append(("note", "the target is unreachable; state as last seen"))
        if s.degraded:
            pairs.append(("degraded", s.degraded_reason))
        if self.metrics is not None:
            pairs += metrics_pairs(self.metrics)
        return pairs

    def text(self) -> str:
        out = "\n".join(f"{k:10} {v}" for k, v in self._pairs())
        if self.session.log_tail and self.session.state.terminal:
            out += "\n--- last lines of the engine log ---\n" + self.session.log_tail
        return out

    def html(self) -> str:
        rows = [(k, badge(v, self.session.unreachable, self.session.degraded) if k == "state"
                 else html.escape(v))
                for k, v in self._pairs()]
        table = "".join(f'<tr><th style="text-align:left">{k}</th>'
                        f'<td style="text-align:left">{v}</td></tr>' for k, v in rows)
        tail = ""
        if self.session.log_tail and self.session.state.terminal:
            tail = (f"<details open><summary>last lines of the engine log</summary><pre>"
                    f"{html.escape(self.session.log_tail)}</pre></details>")
        return f'<table class="hpcserve-table">{table}</table>{tail}'


class SessionNote(_View):
    """A one-line outcome: `NAME: STATE` (after stop, keepalive, use...)."""

    def __init__(self, session: Session, message: str | None = None) -> None:
        self.session = session
        self.message = message

    def text(self) -> str:
        s = self.session
        return f"{s.name}: {self.message or _state(s)}"

    def html(self) -> str:
        s = self.session
        what = html.escape(self.message) if self.message else badge(str(s.state), s.unreachable)
        return f"<code>{html.escape(s.name)}</code>: {what}"


Column = tuple[str, str | Callable[[dict[str, Any]], object]]  # (header, key or function)


class Table(list, _View):
    """Rows of dicts (recipes, targets) shown with chosen columns."""

    def __init__(self, rows: Iterable[dict[str, Any]], columns: Sequence[Column],
                 empty: str = "nothing to show") -> None:
        super().__init__(rows)
        self.columns = columns
        self.empty = empty

    def _cells(self) -> list[list[str]]:
        return [[str(get(r) if callable(get) else r.get(get, "")) for _, get in self.columns]
                for r in self]

    def grid(self) -> str:
        """The text table, its header even when there are no rows (what the CLI prints)."""
        return text_table([h for h, _ in self.columns], self._cells())

    def text(self) -> str:
        return self.grid() if self else self.empty

    def html(self) -> str:
        if not self:
            return f"<i>{html.escape(self.empty)}</i>"
        return html_table([h for h, _ in self.columns], self._cells())

    __repr__ = _View.__repr__
    _repr_pretty_ = _View._repr_pretty_


class Text(_View):
    """Preformatted text (logs, help) that scrolls in a notebook."""

    def __init__(self, text: str, title: str | None = None) -> None:
        self.body = text
        self.title = title

    def text(self) -> str:
        return self.body

    def html(self) -> str:
        title = f"<b>{html.escape(self.title)}</b>" if self.title else ""
        return (f'{title}<pre style="max-height:24em;overflow:auto">{html.escape(self.body)}'
                "</pre>")


def recipes_table(recipes: list[dict[str, Any]]) -> Table:
    return Table(recipes, [
        ("NAME", "name"), ("CATEGORY", "category"),
        ("BACKENDS", lambda r: ",".join(r["backends"])),
        ("GPUS", lambda r: r["resources"]["gpus"]), ("DESCRIPTION", "description")],
        empty="no recipes")


def targets_table(targets: list[dict[str, Any]], *, where: bool = True) -> Table:
    """NAME KIND GPUS, and WHERE (host or URL) unless `where` is False (the CLI's table)."""
    columns: list[Column] = [
        ("NAME", "name"), ("KIND", "kind"),
        ("GPUS", lambda t: ",".join(map(str, t.get("gpus") or [])) or "-")]
    if where:
        columns.append(("WHERE", lambda t: t.get("host") or t.get("base_url") or "this machine"))
    return Table(targets, columns, empty="no targets")


def progress_line(session: Session, elapsed: float) -> str:
    reason = f" ({session.reason})" if session.reason and session.reason != "serving" else ""
    return f"{session.name}: {_state(session)}{reason}, {elapsed:.1f} s"


def progress_html(session: Session, elapsed: float) -> str:
    reason = (f" {html.escape(session.reason)}" if session.reason and session.reason != "serving"
              else "")
    state = badge(str(session.state), session.unreachable)
    name = html.escape(session.name)
    return f"<code>{name}</code> {state}{reason} <small>{elapsed:.1f} s</small>"


def ai_note(done: dict[str, Any], *, removed: bool = False) -> str:
    """What a front end says after registering (or removing) a session in Jupyter AI."""
    if removed:
        return (f"{done['name']}: removed from Jupyter AI" if done["removed"]
                else f"{done['name']}: was not in Jupyter AI")
    return (f"{done['name']}: in Jupyter AI's model picker as {done['name']!r} "
            f"({done['model_id']} via {done['api_base']})"
            + (", and its default model" if done["default"] else "")
            + f"; gateway key {done['key_id']}, revoked when the session ends")
