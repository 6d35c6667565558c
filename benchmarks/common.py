"""Shared helpers: timing statistics, results written as JSON next to this file (each with the
commit and the machine it was measured on), and a burst of concurrent streamed prompts (R10)."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
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


def provenance() -> dict[str, Any]:
    """Where a figure comes from: the commit, whether the tree differed from it (the results
    directory aside, which the benchmarks themselves rewrite), when, and the machine (a figure
    means little without the CPU it was measured on)."""
    changes = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                   ":(exclude)benchmarks/results")
    return {"commit": _git("rev-parse", "HEAD") or "unknown (not a git checkout)",
            "dirty": None if changes is None else bool(changes),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpu": cpu_model(), "cpus": os.cpu_count() or 0,
                        "cpu_features": cpu_features(), "python": platform.python_version()}}


def _git(*args: str) -> str | None:
    """Output of a git command in the checkout; None without git or outside a checkout."""
    try:
        return subprocess.run(["git", *args], cwd=RESULTS.parents[1], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _cpuinfo(key: str) -> str | None:
    """The first `key` line of /proc/cpuinfo (Linux), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; platform's guess elsewhere)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_features() -> list[str]:
    """The vector extensions the engines' kernels pick from (a VM often names no model)."""
    flags = set((_cpuinfo("flags") or "").split())
    return [f for f in ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                        "amx_int8", "amx_bf16") if f in flags]


def write(name: str, data: dict[str, Any]) -> Path:
    """benchmarks/results/NAME.json: the figures, led by their provenance."""
    RESULTS.mkdir(exist_ok=True)
    data = {"benchmark": name, **provenance(), **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


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
