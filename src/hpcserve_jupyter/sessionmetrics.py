"""Live metrics of sessions, scraped only while someone watches.

Asking for a session's metrics (the REST route, `status ID`, an open panel or sidebar polling
it) marks the session watched for WATCH_S seconds. A watched ready session's engine is scraped
(its `Backend.metrics_path`, on every replica) at most once per `min_interval` (the monitor's
tick): on the ask itself when the last scrape is older, and from a tick hook in the background
while the watch lasts, so a sparkline fills without anyone waiting on a scrape and the monitor
never waits on one. GPU use (`Target.gpu_report`: nvidia-smi here, `srun --overlap` on SLURM)
is asked at most every GPU_EVERY_S seconds. Unwatched sessions cost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from .backends import get_backend
from .metrics import EngineMetrics, GpuReport, MetricsWindow, parse
from .metrics.engine import SCRAPE_HEADERS
from .sessions import State
from .sidetasks import cancel_all

if TYPE_CHECKING:
    from .sessions import Session
    from .targets.base import Target

log = logging.getLogger(__name__)
WATCH_S = 60.0  # how long one ask keeps a session watched
GPU_EVERY_S = 30.0
SCRAPE_TIMEOUT = 5.0


@dataclass
class _Watched:
    window: MetricsWindow = field(default_factory=MetricsWindow)
    until: float = 0.0  # monotonic: watched until then
    scraped: float = -1e9  # monotonic time of the last scrape started
    error: str | None = None  # why the last scrape failed
    task: asyncio.Task[None] | None = None
    gpus: GpuReport | None = None
    gpus_at: float = -1e9


class SessionMetrics:
    """Per-session metric windows and the scrapes that fill them."""

    def __init__(self, client: Callable[[], httpx.AsyncClient],
                 api_key: Callable[[Session], str], target: Callable[[str], Target], *,
                 min_interval: float = 2.0) -> None:
        self._client = client
        self._api_key = api_key
        self._target = target
        self.min_interval = min_interval
        self._watched: dict[str, _Watched] = {}

    # ------------------------------------------------------------------ asking

    async def read(self, s: Session) -> dict[str, Any]:
        """The metrics JSON of `s` (scraping now when due); marks it watched."""
        w = self._watched.setdefault(s.id, _Watched())
        w.until = time.monotonic() + WATCH_S
        reason = self.unavailable(s)
        if reason is None:
            self._start(s, w)
            if w.task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(w.task)
            await self._gpus(s, w)
        found = w.window.public()
        out: dict[str, Any] = {"session_id": s.id, "available": found is not None,
                               "reason": reason or w.error}
        if found is not None:
            history = found.pop("history")
            out.update(found, history=[[p["t"], p["tokens_per_s"], p["requests_running"]]
                                       for p in history])
        gpus = w.gpus.public() if w.gpus is not None else {
            "gpus": [], "reason": reason or "not asked yet", "absent": False}
        out["gpus"] = {**gpus, "available": bool(gpus["gpus"])}
        return out

    def unavailable(self, s: Session) -> str | None:
        """Why `s` has no metrics to scrape now, or None."""
        if s.state != State.READY or not s.endpoints:
            return f"the session is {s.state}, not ready"
        try:
            backend = get_backend(s.backend)
        except Exception:
            return f"unknown backend {s.backend!r}"
        if not backend.metrics_path:
            return (f"the {s.backend} engine has no Prometheus metrics endpoint"
                    + (" (the llama-server backend has one)" if s.backend == "llama-cpp"
                       else ""))
        return None

    # ------------------------------------------------------------------ scraping

    async def tick(self, sessions: list[Session]) -> None:
        """The monitor's hook: background scrapes of watched ready sessions; forgets ended
        and unwatched ones."""
        now = time.monotonic()
        live = {s.id: s for s in sessions}
        for sid in list(self._watched):
            w = self._watched[sid]
            s = live.get(sid)
            if s is None or now > w.until:
                if w.task is None:
                    del self._watched[sid]
                continue
            if self.unavailable(s) is None:
                self._start(s, w)

    def _start(self, s: Session, w: _Watched) -> None:
        now = time.monotonic()
        if w.task is not None or now - w.scraped < self.min_interval:
            return
        w.scraped = now
        w.task = asyncio.ensure_future(self._scrape(s, w))

    async def _scrape(self, s: Session, w: _Watched) -> None:
        try:
            backend = get_backend(s.backend)
            assert backend.metrics_path and backend.metrics_format
            headers = {**SCRAPE_HEADERS, "Authorization": f"Bearer {self._api_key(s)}"}
            answers = await asyncio.gather(*(
                self._client().get(url + backend.metrics_path, headers=headers,
                                   timeout=SCRAPE_TIMEOUT) for url in s.endpoints),
                return_exceptions=True)
            errors = []
            for url, r in zip(s.endpoints, answers, strict=True):
                if isinstance(r, BaseException):
                    errors.append(f"{url}: {type(r).__name__}")
                elif r.status_code >= 400:
                    errors.append(f"{url}: HTTP {r.status_code}")
                else:
                    m: EngineMetrics = parse(r.text, backend.metrics_format, time.time())
                    w.window.add(m, replica=url)
            w.error = f"scraping {backend.metrics_path} failed ({'; '.join(errors)})" \
                if errors else None
        except Exception as exc:  # a scrape must never take the monitor down
            log.info("metrics scrape of %s failed: %r", s.id, exc)
            w.error = f"scraping the engine's metrics failed: {exc}"
        finally:
            w.task = None

    async def _gpus(self, s: Session, w: _Watched) -> None:
        if time.monotonic() - w.gpus_at < GPU_EVERY_S or not s.handle:
            return
        w.gpus_at = time.monotonic()
        try:
            w.gpus = await self._target(s.target).gpu_report(s.handle)
        except Exception as exc:
            w.gpus = GpuReport(reason=f"asking for GPU use failed: {exc}")

    async def close(self) -> None:
        await cancel_all(w.task for w in self._watched.values())
        self._watched.clear()
