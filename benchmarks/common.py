"""Shared helpers: timing statistics, results written as JSON next to this file, and a burst
of concurrent streamed prompts (R10)."""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).resolve().parent / "results"


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return {"n": len(samples), "median": statistics.median(samples), "p50": pct(50),
            "p95": pct(95), "p99": pct(99), "min": ordered[0], "max": ordered[-1],
            "mean": statistics.fmean(samples)}


def write(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    data = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"python": platform.python_version(), "cpus": _cpus()}, **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


async def concurrent_prompts(base: str, token: str, n: int) -> dict[str, Any]:
    """`n` streamed chat completions at once to the OpenAI API at `base` (e.g. a session's
    proxy URL) with a Jupyter token: errors (a status other than 200, a stream without
    [DONE], a transport error), time to first event and per request, events received."""
    url = base.rstrip("/") + "/v1/chat/completions"
    headers = {"Authorization": f"token {token}"}
    errors: list[str] = []
    firsts: list[float] = []
    totals: list[float] = []
    tokens = 0

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal tokens
        body = {"messages": [{"role": "user", "content": f"Say a word about the number {i}."}],
                "max_tokens": 16, "temperature": 0, "stream": True}
        start = time.perf_counter()
        first = None
        try:
            async with client.stream("POST", url, json=body, headers=headers) as r:
                if r.status_code != 200:
                    await r.aread()
                    errors.append(f"{r.status_code}: {r.text[:100]}")
                    return
                done = False
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        first = first or time.perf_counter() - start
                        if line == "data: [DONE]":
                            done = True
                        else:
                            tokens += 1
                if not done:
                    errors.append("stream ended without [DONE]")
        except httpx.HTTPError as exc:
            errors.append(repr(exc))
            return
        firsts.append(first or 0.0)
        totals.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=n + 5)
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(one(client, i) for i in range(n)))
    wall = time.perf_counter() - start
    return {"concurrent": n, "errors": len(errors), "error_samples": errors[:5],
            "wall_s": round(wall, 3), "first_event_s": stats(firsts) if firsts else None,
            "request_s": stats(totals) if totals else None, "events": tokens}
