"""What the control panel's parts share: the facade, one lock (with the condition `wait_for`
waits on), the worker threads slow calls run on so the kernel stays responsive, and the way an
outcome or error is shown."""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import ipywidgets as W

from ..errors import HpcserveError

if TYPE_CHECKING:
    from ..facade import Facade


class Shared:
    """The facade, the lock and the workers of one control panel."""

    def __init__(self, facade: Facade) -> None:
        self.facade = facade
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # notified on every table change
        self.errors: list[str] = []  # every error shown, oldest first
        self._workers: list[threading.Thread] = []

    def say(self, line: W.HTML, message: str, *, error: bool = False) -> None:
        """Show an outcome in `line` (a status line); errors in red, and kept in `errors`."""
        if error:
            self.errors.append(message)
        colour = "#c62828" if error else "inherit"
        line.value = f'<span style="color:{colour}">{html.escape(message)}</span>'

    def start(self, fn: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=fn, name=f"hpcserve-panel-{name}", daemon=True)
        with self.lock:
            self._workers = [w for w in self._workers if w.is_alive()]
            self._workers.append(t)
        t.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker threads (launches, stops, prompts); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.lock:
                alive = [w for w in self._workers if w.is_alive()]
            if not alive:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            alive[0].join(left)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until `predicate()` holds (re-checked on every table change)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 1.0))
        return True


def message(exc: BaseException) -> str:
    """An error as a status line shows it: the message, and the hint of an HpcserveError."""
    text, hint = str(exc), None
    if isinstance(exc, HpcserveError):
        text, hint = exc.message or text, exc.hint
    text = text or type(exc).__name__
    return f"{text} (hint: {hint})" if hint else text


def set_options(dropdown: W.Dropdown, options: list[tuple[str, str]]) -> None:
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


def select(dropdown: W.Dropdown, value: str) -> None:
    """Select `value` if the dropdown offers it."""
    if value in [v for _, v in dropdown.options]:
        dropdown.value = value
