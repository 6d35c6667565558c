"""Replica groups: which endpoint of a session serves the next request.

Round robin over a session's endpoints; a connection error fails over to the next replica; a
replica that fails `max_failures` times in a row is taken out until its health check passes.
Admission control: at most `max_inflight` requests in flight per replica, then a bounded FIFO
queue; beyond it `Overloaded` (the handler answers 429 with Retry-After). Pure asyncio: no
Jupyter or tornado imports, so it is tested and reused on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


class Overloaded(Exception):
    """Every replica is at its in-flight limit and the queue is full (or the wait timed out)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class NoReplica(Exception):
    """No replica is in service (all taken out, none passes its health check)."""


@dataclass
class Replica:
    url: str
    inflight: int = 0
    failures: int = 0  # consecutive connection failures
    out: bool = False  # taken out of rotation until its health check passes
    next_check: float = 0.0
    served: int = 0
    degraded: bool = False  # the manager's probes say it hangs: out until they pass

    @property
    def serving(self) -> bool:
        return not self.out and not self.degraded

    def view(self) -> dict[str, object]:
        return {"url": self.url, "inflight": self.inflight, "in_service": self.serving,
                "consecutive_failures": self.failures, "served": self.served,
                "degraded": self.degraded}


@dataclass
class _Waiter:
    future: asyncio.Future[Replica]
    exclude: frozenset[str] = field(default_factory=frozenset)


class ReplicaGroup:
    """The replicas of one session. Not thread-safe: use it from one event loop."""

    def __init__(self, endpoints: list[str], *, health: Callable[[str], Awaitable[bool]],
                 max_inflight: int = 0, max_queue: int = 0, queue_timeout: float = 60.0,
                 max_failures: int = 3, recheck_interval: float = 5.0) -> None:
        self.replicas: list[Replica] = []
        self.health = health
        self.max_inflight = max_inflight  # 0: no limit
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.max_failures = max(1, max_failures)
        self.recheck_interval = recheck_interval
        self._rr = 0
        self._queue: deque[_Waiter] = deque()
        self._probing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._avg_s = 1.0  # moving average of request durations, for Retry-After
        self.rejected = 0
        self.update(endpoints)

    # ------------------------------------------------------------------ membership

    def update(self, endpoints: list[str], degraded: list[str] | None = None) -> None:
        """Follow the session's endpoints and which of them its health probes call degraded;
        replicas that stay keep their counters."""
        bad = set(degraded or ())
        if [r.url for r in self.replicas] == list(endpoints) and \
                {r.url for r in self.replicas if r.degraded} == bad:
            return
        known = {r.url: r for r in self.replicas}
        self.replicas = [known.get(url) or Replica(url) for url in endpoints]
        for r in self.replicas:
            r.degraded = r.url in bad
        self._dispatch()

    @property
    def queued(self) -> int:
        return sum(1 for w in self._queue if not w.future.done())

    def view(self) -> dict[str, object]:
        return {"replicas": [r.view() for r in self.replicas], "queued": self.queued,
                "max_inflight_per_replica": self.max_inflight, "max_queue": self.max_queue,
                "rejected": self.rejected}

    # ------------------------------------------------------------------ choosing

    def _in_service(self, exclude: frozenset[str]) -> list[Replica]:
        return [r for r in self.replicas if r.serving and r.url not in exclude]

    def _next_free(self, exclude: frozenset[str], limit: bool = True) -> Replica | None:
        n = len(self.replicas)
        for i in range(n):
            r = self.replicas[(self._rr + i) % n]
            if not r.serving or r.url in exclude:
                continue
            if limit and self.max_inflight and r.inflight >= self.max_inflight:
                continue
            self._rr = (self._rr + i + 1) % n
            return r
        return None

    def _take(self, r: Replica) -> Replica:
        r.inflight += 1
        r.served += 1
        return r

    async def acquire(self, exclude: frozenset[str] = frozenset(), *,
                      admit: bool = True) -> Replica:
        """A replica with a free slot (waiting in the FIFO queue if all are busy).

        admit=False skips the in-flight limit (cheap requests: model lists, health checks).
        Raises NoReplica when none is in service, Overloaded when the queue is full or the
        wait exceeds queue_timeout. Every successful acquire needs one `release`.
        """
        if not self._in_service(exclude):
            await self.recheck(force=True)
            if not self._in_service(exclude):
                raise NoReplica(self._why_none(exclude))
        self._schedule_rechecks()
        r = self._next_free(exclude, limit=admit)
        if r is not None:
            return self._take(r)
        if self.queued >= self.max_queue:
            self.rejected += 1
            raise Overloaded(f"all {len(self.replicas)} replica(s) are busy "
                             f"({self.max_inflight} request(s) each) and {self.queued} "
                             f"request(s) are queued", self.retry_after())
        waiter = _Waiter(asyncio.get_running_loop().create_future(), exclude)
        self._queue.append(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout):
                return await asyncio.shield(waiter.future)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result())  # granted just as we gave up
            else:
                waiter.future.cancel()
            with contextlib.suppress(ValueError):
                self._queue.remove(waiter)
            if isinstance(exc, TimeoutError):
                self.rejected += 1
                raise Overloaded(f"waited {self.queue_timeout:.0f} s in the queue without a "
                                 "free replica", self.retry_after()) from None
            raise

    def release(self, r: Replica, *, duration: float | None = None) -> None:
        r.inflight = max(0, r.inflight - 1)
        if duration is not None:
            self._avg_s = 0.8 * self._avg_s + 0.2 * duration
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to queued requests, oldest first."""
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()
        for waiter in list(self._queue):
            if waiter.future.done():
                continue
            r = self._next_free(waiter.exclude)
            if r is None:
                if not self._in_service(waiter.exclude):
                    waiter.future.set_exception(NoReplica(self._why_none(waiter.exclude)))
                    self._queue.remove(waiter)
                continue
            waiter.future.set_result(self._take(r))
            self._queue.remove(waiter)

    def retry_after(self) -> int:
        capacity = max(1, len(self._in_service(frozenset())) * (self.max_inflight or 1))
        return max(1, min(60, math.ceil(self._avg_s * (self.queued + 1) / capacity)))

    def _why_none(self, exclude: frozenset[str]) -> str:
        if not self.replicas:
            return "the session has no endpoint yet"
        if exclude and len(exclude) >= len(self.replicas):
            return f"no replica of {len(self.replicas)} could be reached"
        if all(r.degraded or r.out for r in self.replicas) and \
                any(r.degraded for r in self.replicas):
            return (f"all {len(self.replicas)} replica(s) fail their health checks (degraded); "
                    "they return to the rotation when the checks pass")
        return (f"all {len(self.replicas)} replica(s) are out of service after repeated "
                "connection failures; they return when their health check passes")

    # ------------------------------------------------------------------ failures and health

    def succeeded(self, r: Replica) -> None:
        r.failures = 0

    def failed(self, r: Replica) -> None:
        """A connection to `r` failed; after max_failures in a row it leaves the rotation."""
        r.failures += 1
        if r.failures >= self.max_failures and not r.out:
            r.out = True
            r.next_check = time.monotonic() + self.recheck_interval
        self._dispatch()

    def _schedule_rechecks(self) -> None:
        now = time.monotonic()
        for r in self.replicas:
            if r.out and r.next_check <= now and r.url not in self._probing:
                task = asyncio.ensure_future(self._probe(r))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def recheck(self, *, force: bool = False) -> None:
        """Probe out-of-service replicas whose check is due (all of them with force)."""
        now = time.monotonic()
        due = [r for r in self.replicas if r.out and r.url not in self._probing
               and (force or r.next_check <= now)]
        await asyncio.gather(*(self._probe(r) for r in due))

    async def _probe(self, r: Replica) -> None:
        self._probing.add(r.url)
        try:
            ok = False
            with contextlib.suppress(Exception):
                ok = await self.health(r.url)
            if ok:
                r.out, r.failures = False, 0
                self._dispatch()
            else:
                r.next_check = time.monotonic() + self.recheck_interval
        finally:
            self._probing.discard(r.url)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for waiter in self._queue:
            if not waiter.future.done():
                waiter.future.set_exception(NoReplica("the server is shutting down"))
        self._queue.clear()
