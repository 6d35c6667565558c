"""The recent scrapes of one session, turned into rates and a short history.

Token counts are counters: a rate is their increase over time. An engine that restarts starts
its counters again from zero, so a value below the one before counts as a reset (the increase
since is the new value, as Prometheus' `rate()` counts it). A session with several replicas
keeps one series per replica, since one replica's restart must not look like a drop of the
session's sum; rates and gauges are then added up over the replicas seen recently.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

from .engine import EngineMetrics, combine

HistoryPoint = tuple[float, float | None, int | None]  # (t, tokens/s, requests running)


def _iso(ts: float) -> str:
    """ISO 8601 in UTC, to the second (as a session's `ends_at`)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _increase(values: Iterable[float]) -> float:
    """How much a counter rose along `values`, a drop counting as a restart from zero."""
    return sum(b - a if b >= a else b for a, b in pairwise(values))


@dataclass
class _Pair:
    """Two consecutive scrapes of one replica: what a counter rose by between them."""

    end: float
    seconds: float
    tokens: float | None
    running: int | None


class MetricsWindow:
    """Scrapes of the last `keep_s` seconds, per replica, safe to share between threads.

    `rate_s` is the span rates are taken over (the last minute), and the longest gap between
    two scrapes that still counts as one stretch of serving: metrics are scraped only while
    someone watches, and a rate across an unwatched hour would smear it into one point.
    `step_s` is the width of one point of the history a sparkline draws.
    """

    def __init__(self, keep_s: float = 600.0, rate_s: float = 60.0, step_s: float = 10.0) -> None:
        if not 0 < step_s <= keep_s or not 0 < rate_s <= keep_s:
            raise ValueError("need 0 < step_s, rate_s <= keep_s")
        self.keep_s, self.rate_s, self.step_s = keep_s, rate_s, step_s
        self._lock = threading.Lock()
        self._series: dict[str, deque[EngineMetrics]] = {}

    # ------------------------------------------------------------------ input

    def add(self, metrics: EngineMetrics, replica: str = "") -> bool:
        """Record one scrape of `replica`; False (and ignored) when it is not newer than the
        replica's last one, as a late answer to an earlier scrape is not."""
        with self._lock:
            series = self._series.setdefault(replica, deque())
            if series and metrics.at <= series[-1].at:
                return False
            series.append(metrics)
            self._prune(metrics.at)
            return True

    def _prune(self, now: float) -> None:
        horizon = max(now, self._newest()) - self.keep_s  # a late replica keeps no old stretch
        for replica in list(self._series):
            series = self._series[replica]
            while series and series[0].at < horizon:
                series.popleft()
            if not series:
                del self._series[replica]

    def _newest(self) -> float:
        return max((s[-1].at for s in self._series.values() if s), default=0.0)

    # ------------------------------------------------------------------ views (lock held)

    def _recent(self) -> list[deque[EngineMetrics]]:
        """The series of replicas scraped within `rate_s` of the newest scrape."""
        newest = self._newest()
        return [s for s in self._series.values() if s and s[-1].at >= newest - self.rate_s]

    def _rate(self, field: str) -> float | None:
        total, any_rate = 0.0, False
        newest = self._newest()
        for series in self._recent():
            if getattr(series[-1], field) is None:
                continue
            points = [(m.at, v) for m in series
                      if m.at >= newest - self.rate_s and (v := getattr(m, field)) is not None]
            if len(points) < 2 or points[-1][0] <= points[0][0]:
                continue
            total += _increase(v for _, v in points) / (points[-1][0] - points[0][0])
            any_rate = True
        return total if any_rate else None

    def _pairs(self, series: deque[EngineMetrics]) -> list[_Pair]:
        pairs = []
        for a, b in pairwise(series):
            seconds = b.at - a.at
            if seconds > self.rate_s:
                continue  # an unwatched stretch: no rate to tell
            tokens = None
            if a.generation_tokens_total is not None and b.generation_tokens_total is not None:
                tokens = _increase((a.generation_tokens_total, b.generation_tokens_total))
            pairs.append(_Pair(b.at, seconds, tokens, b.requests_running))
        return pairs

    def _history(self) -> list[HistoryPoint]:
        newest = self._newest()
        if not self._series:
            return []
        slots = int(self.keep_s // self.step_s)
        per_slot: list[list[tuple[float | None, int | None]]] = [[] for _ in range(slots)]
        for series in self._series.values():
            buckets: dict[int, list[_Pair]] = {}
            for pair in self._pairs(series):
                k = int((newest - pair.end) // self.step_s)
                if k < slots:
                    buckets.setdefault(k, []).append(pair)
            for k, pairs in buckets.items():
                counted = [p for p in pairs if p.tokens is not None]
                seconds = sum(p.seconds for p in counted)
                rate = sum(p.tokens or 0.0 for p in counted) / seconds if seconds else None
                per_slot[k].append((rate, pairs[-1].running))
        used = [k for k in range(slots) if per_slot[k]]
        if not used:
            return []
        out: list[HistoryPoint] = []
        for k in range(max(used), -1, -1):
            rates = [r for r, _ in per_slot[k] if r is not None]
            running = [n for _, n in per_slot[k] if n is not None]
            out.append((round(newest - k * self.step_s, 3),
                        round(sum(rates), 2) if rates else None,
                        sum(running) if running else None))
        return out

    # ------------------------------------------------------------------ views

    def latest(self) -> EngineMetrics | None:
        """The last scrape of each recent replica, as one."""
        with self._lock:
            return combine(s[-1] for s in self._recent())

    def generation_tokens_per_s(self) -> float | None:
        """Generated tokens per second over the last `rate_s` seconds; None until two scrapes
        of a replica fall in that span."""
        with self._lock:
            return self._rate("generation_tokens_total")

    def prompt_tokens_per_s(self) -> float | None:
        """Prompt tokens per second over the last `rate_s` seconds."""
        with self._lock:
            return self._rate("prompt_tokens_total")

    def history(self) -> list[HistoryPoint]:
        """(t, generated tokens/s, requests running) per `step_s` slot, oldest first, from the
        first slot with data to the newest; a slot without scrapes has None values. Slots end
        at the newest scrape's time, so the last point is always the freshest."""
        with self._lock:
            return self._history()

    def public(self) -> dict[str, Any] | None:
        """The JSON status views carry (`metrics`), None before the first scrape:
        requests_running, requests_waiting, prompt_tokens_total, generation_tokens_total,
        generation_tokens_per_s, prompt_tokens_per_s, kv_cache_usage (null when the engine has
        none), scraped_at (ISO 8601) and history [{t, tokens_per_s, requests_running}]."""
        with self._lock:  # one consistent view, whatever a scraping thread adds meanwhile
            latest = combine(s[-1] for s in self._recent())
            if latest is None:
                return None
            gen = self._rate("generation_tokens_total")
            prompt = self._rate("prompt_tokens_total")
            history = self._history()
        kv = latest.kv_cache_usage
        return {
            "requests_running": latest.requests_running,
            "requests_waiting": latest.requests_waiting,
            "prompt_tokens_total": latest.prompt_tokens_total,
            "generation_tokens_total": latest.generation_tokens_total,
            "generation_tokens_per_s": None if gen is None else round(gen, 2),
            "prompt_tokens_per_s": None if prompt is None else round(prompt, 2),
            "kv_cache_usage": None if kv is None else round(kv, 4),
            "scraped_at": _iso(latest.at),
            "history": [{"t": t, "tokens_per_s": rate, "requests_running": running}
                        for t, rate, running in history],
        }
