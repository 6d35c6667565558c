"""Events handed from a facade's producer (the embedded manager's loop thread, or the remote
facade's HTTP event stream) to a front end's thread: one queue type shared by both facades, so a
front end consumes both the same way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue as _queue
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

_log = logging.getLogger(__name__)
_CLOSED = object()


class Subscription:
    """Events handed from the facade's side (a loop thread, an HTTP stream) to a consumer thread.

    Iterate it (ends when closed) or call `get(timeout)`; `close()` ends it and releases the
    producer. Shared by the embedded and the remote facade.
    """

    def __init__(self) -> None:
        self._queue: _queue.Queue[Any] = _queue.Queue()
        self._closed = threading.Event()
        self._on_close: list[Callable[[], Any]] = []

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def put(self, event: dict[str, Any]) -> None:
        if not self._closed.is_set():
            self._queue.put(event)

    def on_close(self, fn: Callable[[], Any]) -> None:
        self._on_close.append(fn)

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next event; None after `timeout` seconds or once closed."""
        try:
            item = self._queue.get(timeout=timeout)
        except _queue.Empty:
            return None
        if item is _CLOSED:
            self._queue.put(_CLOSED)  # for any other reader
            return None
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            item = self.get()
            if item is None:
                return
            yield item

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(_CLOSED)
        for fn in self._on_close:
            with contextlib.suppress(Exception):
                fn()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def deliver(sub: Subscription, callback: Callable[[dict[str, Any]], None]) -> Subscription:
    """Call `callback` for each event of `sub` on a daemon thread; a failing callback is logged
    and does not end the subscription."""

    def run() -> None:
        for event in sub:
            try:
                callback(event)
            except Exception:
                _log.exception("hpcserve event callback failed")

    threading.Thread(target=run, name="hpcserve-events", daemon=True).start()
    return sub


async def cancel_task(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def subscriptions_of(owner: Any) -> weakref.WeakSet[Subscription]:
    subs = owner.__dict__.get("_subscriptions")
    if subs is None:
        subs = owner.__dict__.setdefault("_subscriptions", weakref.WeakSet())
    return subs
