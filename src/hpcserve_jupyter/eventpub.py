"""Session events to subscribers (the REST event stream, the facades' watch): what this
manager changes, and, by following the store's event log, what other managers sharing the state
directory (a second Jupyter server, the CLI) wrote. Mixed into SessionManager, whose writes
call `_publish`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import expiry

if TYPE_CHECKING:
    from .sessions import Session
    from .store import Store

# Events that change no state but are told to subscribers, with their message.
NOTICES = expiry.NOTICES | {"extended", "degraded", "healthy"}


class EventPublisher:
    """Subscribers' queues, and what each was told."""

    store: Store

    def _init_events(self, store: Store) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        # What subscribers were last told of each session, and how far the store's event log
        # was followed for changes other processes wrote (see _follow_store).
        self._published: dict[str, tuple[str, bool]] = {}
        self._seq = store.last_seq()
        # Told of changes other processes wrote about things that are not sessions (jobs).
        self.event_followers: list[Callable[[dict[str, Any]], None]] = []

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(q)

    def subscribed(self, q: asyncio.Queue[dict[str, Any]]) -> bool:
        """False once the queue was dropped for falling behind: its reader must resync."""
        return q in self._subscribers

    def _follow_store(self) -> None:
        """Tell subscribers what other managers sharing the state directory (a second Jupyter
        server, the CLI) wrote: each state change in the store's event log that they were not
        told yet, in order. Without this, an event stream would only show its own process's
        changes, e.g. never the `ready` that the monitoring server found."""
        if not self._subscribers:
            self._seq = self.store.last_seq()  # nobody to tell: skip ahead
            return
        new: list[dict[str, Any]] = []
        while batch := self.store.events(after=self._seq, limit=1000):
            self._seq = batch[-1]["seq"]
            new += batch
        last = {e["session_id"]: n for n, e in enumerate(new)}
        current: dict[str, Session | None] = {}
        for n, e in enumerate(new):
            sid = e["session_id"]
            told_state, told_unreachable = self._published.get(sid, ("", False))
            unreachable = (e["kind"] == "unreachable" if e["kind"] in
                           ("unreachable", "reachable") else told_unreachable)
            notice = e["kind"] in NOTICES  # said once, whoever wrote it
            if (e["state"], unreachable) == (told_state, told_unreachable) and not notice:
                continue  # this process wrote it, or it changed nothing subscribers see
            if sid not in current:
                current[sid] = self.store.get(sid)
            s = current[sid]
            if s is None:  # not a session: a job's event
                for follower in self.event_followers:
                    follower(e)
                continue
            if notice:
                self._publish(s, e["kind"], message=e["message"])
            elif last[sid] == n:  # its newest change: the session as it is now
                self._publish(s, e["kind"])
            else:  # an intermediate change: as it was then
                self._publish(s, e["kind"], {**s.public(), "state": e["state"],
                                             "reason": e["message"], "unreachable": unreachable})

    def _publish(self, s: Session, kind: str, public: dict[str, Any] | None = None, *,
                 message: str | None = None) -> None:
        public = public or s.public()
        self._published[s.id] = (str(public["state"]), bool(public.get("unreachable")))
        event = {"type": kind, "session": public, "ts": time.time()}
        if message is not None:
            event["message"] = message
        self.broadcast(event)

    def broadcast(self, event: dict[str, Any]) -> None:
        """Push one event to every subscriber (a job's change, too)."""
        for q in list(self._subscribers):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                self._subscribers.discard(q)  # a consumer that stopped reading
