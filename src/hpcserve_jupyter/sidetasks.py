"""Per-session background tasks (readiness probes, metrics scrapes) end with the monitor: each
is cancelled, then awaited so that none outlives the event loop it ran on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


async def cancel_all(tasks: Iterable[asyncio.Future | None]) -> None:
    """Cancel these tasks (None: nothing running) and wait until every one has ended."""
    running = [t for t in tasks if t is not None]
    for t in running:
        t.cancel()
    await asyncio.gather(*running, return_exceptions=True)
