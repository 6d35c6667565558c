"""Parse the time and size strings users type ("2h", "1:30:00", "16G") into numbers."""

from __future__ import annotations

import math
import re

from .errors import shown

_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*$", re.I)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.I)


def parse_duration(value: str | int | float) -> int:
    """Seconds from '90', '90s', '30m', '2h', '1d', 'HH:MM:SS', 'D-HH:MM:SS' (SLURM style)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '30m', '2h' or '1:30:00'")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError("a duration must be positive")
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a duration")
        return int(value)
    text = str(value).strip()
    m = _DURATION.match(text)
    if m:
        seconds = float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]
    else:
        days = 0
        if "-" in text:
            d, _, text = text.partition("-")
            if not d.isdigit():
                raise ValueError(f"{value!r} is not a duration: use '30m', '2h' or '1:30:00'")
            days = int(d)
        parts = text.split(":")
        if not (1 < len(parts) <= 3) or not all(p.isdigit() for p in parts):
            raise ValueError(f"{value!r} is not a duration: use '30m', '2h' or '1:30:00'")
        nums = [int(p) for p in parts]
        while len(nums) < 3:
            nums.insert(0, 0)
        seconds = days * 86400 + nums[0] * 3600 + nums[1] * 60 + nums[2]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    if not math.isfinite(seconds):  # '1e400'-sized digit strings become float('inf')
        raise ValueError(f"{shown(value, 40)} is too long a duration")
    return int(seconds)


def format_duration(seconds: int) -> str:
    """SLURM's D-HH:MM:SS / HH:MM:SS form, which sbatch --time accepts."""
    days, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{days}-{h:02d}:{m:02d}:{s:02d}" if days else f"{h:02d}:{m:02d}:{s:02d}"


def parse_size_mb(value: str | int) -> int:
    """Megabytes from '16G', '512M', '16GiB' or a bare number of MB."""
    if isinstance(value, bool):
        raise ValueError("expected a size like '16G' or '512M'")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("a size must be positive")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size: use '16G' or '512M'")
    unit = (m.group(2) or "m")[0].lower()
    factor = {"b": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024**2}[unit]
    mb_float = float(m.group(1)) * factor
    if not math.isfinite(mb_float):  # '1e400'-sized digit strings become float('inf')
        raise ValueError(f"{shown(value, 40)} is too large a size")
    mb = int(mb_float)
    if mb <= 0:
        raise ValueError("a size must be positive")
    return mb
