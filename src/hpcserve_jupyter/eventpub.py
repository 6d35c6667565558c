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
from .sessions import State

if TYPE_CHECKING:
    from .sessions import Session
    from .store import Store

# Events that change no state but are told to subscribers, with their message.
NOTICES = expiry.NOTICES | {"extended", "degraded", "healthy"}


def activity_slack(idle_timeout_s: float) -> float:
    """How far a ready session's idle countdown, as subscribers last got it, may lag its
    activity before an `activity` event corrects it: 5% of the idle timeout, 1 s to 60 s."""
    return min(60.0, max(1.0, idle_timeout_s / 20))


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
        # Each session's last activity as subscribers were last told it (see _tell_activity).
        self._activity_told: dict[str, float] = {}
        self._told_since = time.time()

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

    def _tell_activity(self, live: list[Session] | None = None) -> None:
        """An `activity` event (the session, no state change) for each ready session whose
        idle countdown subscribers hold is off by more than `activity_slack`: requests through
        the proxy or the gateway reset the idle timer without writing an event, and the
        sidebar and panel would count down to an idle stop that moved away."""
        if not self._subscribers:
            return
        live = self.store.all(live_only=True) if live is None else live
        for s in live:
            if s.state != State.READY or not s.idle_timeout_s:
                continue
            told = self._activity_told.get(s.id, self._told_since)
            if s.last_activity - told > activity_slack(s.idle_timeout_s):
                self._publish(s, "activity")
        ids = {s.id for s in live}
        for sid in [k for k in self._activity_told if k not in ids]:
            del self._activity_told[sid]

    def _publish(self, s: Session, kind: str, public: dict[str, Any] | None = None, *,
                 message: str | None = None) -> None:
        public = public or s.public()
        self._published[s.id] = (str(public["state"]), bool(public.get("unreachable")))
        self._activity_told[s.id] = max(s.last_activity,
                                        self._activity_told.get(s.id, s.last_activity))
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
