"""Health while ready: an engine that hangs (alive, port open, no answers) must not stay
`ready` forever with the gateway sending it requests.

Ready sessions are probed every `interval` seconds, not every tick (a probe per ready SLURM
session per tick cost ~1.3 s per tick with 200 sessions: p3_slurm_tick), in background tasks the
monitor never waits for. An endpoint that fails `failures` probes in a row is degraded; the
session carries that as a flag with the reason (like `unreachable`, not a state), the gateway
takes those endpoints out of its rotation, and a probe that passes again clears it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .sidetasks import cancel_all

log = logging.getLogger(__name__)

Probe = Callable[[str, str, str], Awaitable[bool]]  # (url, health path, api key) -> answers
Verdict = Callable[[str, list[str], str], None]  # (session id, degraded endpoints, reason)


@dataclass
class _Watch:
    due: float = 0.0  # monotonic time of the next probe
    fails: dict[str, int] = field(default_factory=dict)  # endpoint -> failures in a row
    task: asyncio.Task[None] | None = None


class ReadyHealth:
    """Background health probes of ready sessions; `verdict` hears when the set of degraded
    endpoints of a session changes."""

    def __init__(self, probe: Probe, verdict: Verdict, *, interval: float = 15.0,
                 failures: int = 2) -> None:
        self.probe = probe
        self.verdict = verdict
        self.interval = interval
        self.failures = max(1, failures)
        self._watches: dict[str, _Watch] = {}

    def consider(self, session_id: str, endpoints: list[str], path: str, key: str,
                 degraded: list[str]) -> None:
        """Called for a ready session on every tick: starts its probe when one is due."""
        w = self._watches.get(session_id)
        if w is None:
            # The first probe somewhere in the next 0.5-1.5 intervals: sessions that became
            # ready together (a restart, a batch launch) are not all probed in one tick.
            spread = 0.5 + (zlib.crc32(session_id.encode()) % 1000) / 1000
            w = self._watches[session_id] = _Watch(due=time.monotonic() + self.interval * spread)
        now = time.monotonic()
        if w.task is not None or now < w.due or not endpoints:
            return
        w.due = now + self.interval
        w.task = asyncio.ensure_future(self._run(session_id, w, list(endpoints), path, key,
                                                 list(degraded)))

    async def _run(self, sid: str, w: _Watch, endpoints: list[str], path: str, key: str,
                   degraded: list[str]) -> None:
        try:
            results = await asyncio.gather(*(self.probe(u, path, key) for u in endpoints))
            for url, ok in zip(endpoints, results, strict=True):
                w.fails[url] = 0 if ok else w.fails.get(url, 0) + 1
            for url in [u for u in w.fails if u not in endpoints]:
                del w.fails[url]
            now_bad = [u for u in endpoints if w.fails.get(u, 0) >= self.failures]
            # An endpoint already degraded stays so until a probe of it passes.
            now_bad += [u for u in degraded if u in endpoints and u not in now_bad
                        and w.fails.get(u, 0) > 0]
            if sorted(now_bad) != sorted(degraded):
                self.verdict(sid, now_bad, self._reason(now_bad, endpoints))
        except Exception:  # a probe must never take the monitor down
            log.exception("health probe of session %s failed", sid)
        finally:
            w.task = None

    def _reason(self, bad: list[str], endpoints: list[str]) -> str:
        if not bad:
            return ""
        what = ("its engine does not" if len(endpoints) == 1 else
                f"{len(bad)} of its {len(endpoints)} replicas do not")
        return (f"{what} answer the health check ({self.failures} probes in a row, every "
                f"{self.interval:g} s): {', '.join(bad)}")

    async def settled(self) -> None:
        """Until the probes running now have ended (and said their verdicts)."""
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def forget(self, session_id: str) -> None:
        w = self._watches.pop(session_id, None)
        if w is not None and w.task is not None:
            w.task.cancel()

    def prune(self, live: set[str]) -> None:
        for sid in [s for s in self._watches if s not in live]:
            self.forget(sid)

    async def close(self) -> None:
        await cancel_all(w.task for w in self._watches.values())
        self._watches.clear()
