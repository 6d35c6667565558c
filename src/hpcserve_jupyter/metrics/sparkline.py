"""A row of Unicode block characters for a short series, for text views (`status`, `%serve`)."""

from __future__ import annotations

import math
from collections.abc import Iterable

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Iterable[float | None], width: int | None = None) -> str:
    """One character per value (the last `width` of them), scaled from 0 (or the least value,
    if negative) to the greatest, so an idle stretch sits on the floor rather than being
    stretched to full height. A missing value (None, NaN) is a space: a gap, not a zero."""
    vals = [None if v is None or math.isnan(v) else float(v) for v in values]
    if width is not None:
        vals = vals[-width:] if width > 0 else []
    present = [v for v in vals if v is not None]
    if not present:
        return " " * len(vals)
    low = min(0.0, *present)
    span = max(present) - low
    top = len(BLOCKS) - 1
    return "".join(" " if v is None
                   else BLOCKS[round((v - low) / span * top) if span > 0 else 0]
                   for v in vals)
