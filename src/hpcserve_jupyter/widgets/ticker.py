"""A daemon thread calling a function at a fixed interval until closed: the control panel's
clock for its countdowns and its metrics polls (the session table itself follows events)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Ticker:
    """Calls `fn()` every `interval` seconds on a daemon thread; `close()` ends it. A failing
    call is logged and the next one still comes (a countdown must not die of one error)."""

    def __init__(self, fn: Callable[[], None], interval: float, name: str) -> None:
        if interval <= 0:
            raise ValueError("the ticker's interval must be positive")
        self._fn = fn
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"hpcserve-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._fn()
            except Exception:
                log.exception("the panel's ticker call failed")

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        """Stop ticking; waits for a call in progress (not when called from the tick)."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
