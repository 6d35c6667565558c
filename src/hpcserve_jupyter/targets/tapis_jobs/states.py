"""A Tapis job's status -> what the target tells the manager (pure).

    PENDING, PROCESSING_INPUTS, STAGING_INPUTS,
    STAGING_JOB, SUBMITTING_JOB, QUEUED   -> pending, the status as the reason
    BLOCKED, PAUSED                       -> pending (Tapis waits on something; reason says it)
    RUNNING                               -> running: the manager's health check through the
                                             tunnel decides starting / ready
    ARCHIVING                             -> stopping (the command ended, outputs are copied)
    FINISHED                              -> exited, code 0
    CANCELLED                             -> stopped (our cancel, or one outside hpcserve)
    FAILED                                -> exited (timeout when the time limit ended it,
                                             stopped when the scheduler's job was cancelled
                                             outside Tapis), with `lastMessage` and the
                                             output's tail
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..base import Phase

WAITING = ("PENDING", "PROCESSING_INPUTS", "STAGING_INPUTS", "STAGING_JOB", "SUBMITTING_JOB",
           "QUEUED")
HELD = ("BLOCKED", "PAUSED")
TERMINAL = ("FINISHED", "CANCELLED", "FAILED")


def phase_of(status: str) -> Phase:
    status = status.upper()
    if status in WAITING or status in HELD:
        return Phase.PENDING
    if status == "RUNNING":
        return Phase.RUNNING
    if status == "ARCHIVING":
        return Phase.STOPPING
    if status == "CANCELLED":
        return Phase.STOPPED
    if status in ("FINISHED", "FAILED"):
        return Phase.EXITED
    return Phase.PENDING  # a status newer than this table: wait and see


def is_timeout(job: Mapping[str, Any]) -> bool:
    """Whether the scheduler's time limit ended it (Tapis says so in its message)."""
    text = f"{job.get('lastMessage') or ''} {job.get('remoteResultInfo') or ''} " \
           f"{job.get('condition') or ''}"
    return bool(re.search(r"\bTIME(OUT|_?LIMIT)\b|time limit", text, re.IGNORECASE))


def cancelled_outside(job: Mapping[str, Any]) -> bool:
    """Whether the scheduler's job was cancelled outside Tapis (scancel): Tapis reports that
    as FAILED, condition SCHEDULER_CANCELLED, 'ended with remote status "CANCELLED"'."""
    return str(job.get("condition") or "") == "SCHEDULER_CANCELLED" or bool(
        re.search(r'remote status "?CANCELLED', str(job.get("lastMessage") or "")))


def exit_code_of(job: Mapping[str, Any]) -> int | None:
    """The remote exit code Tapis recorded (`remoteResultInfo`, e.g. "0:0" from sacct)."""
    info = str(job.get("remoteResultInfo") or "").strip()
    match = re.match(r"^(-?\d+)(?::(\d+))?$", info)
    if not match:
        return None
    code, signal = int(match[1]), int(match[2] or 0)
    return 128 + signal if code == 0 and signal else code


def reason_of(job: Mapping[str, Any]) -> str:
    status = str(job.get("status") or "?")
    message = str(job.get("lastMessage") or "").strip()
    return f"Tapis job {status}" + (f": {message[:500]}" if message else "")


def time_limit_of(job: Mapping[str, Any]) -> int | None:
    """maxMinutes, the scheduler's --time Tapis asked for, in seconds."""
    minutes = job.get("maxMinutes")
    return int(minutes) * 60 if isinstance(minutes, int | float) and minutes > 0 else None


def time_left_of(job: Mapping[str, Any], now: float) -> float | None:
    """What maxMinutes leaves since remoteStarted (when the batch job began running)."""
    import datetime as dt

    limit, started = time_limit_of(job), job.get("remoteStarted")
    if limit is None or not isinstance(started, str) or not started:
        return None
    try:
        begun = dt.datetime.fromisoformat(started.replace("Z", "+00:00"))
    except ValueError:
        return None
    if begun.tzinfo is None:
        begun = begun.replace(tzinfo=dt.UTC)
    return max(0.0, begun.timestamp() + limit - now)
