"""Sessions: one launched recipe and its state machine. Allowed transitions live only here.

    pending -> starting -> ready -> stopping -> stopped
         \\-----------\\--------\\-> failed | timeout
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from .records import InvalidTransition as InvalidTransition  # raised by transition()
from .records import StateRecord

# What a session may be called (JSON Schema style for the OpenAPI document; checked with
# re.fullmatch, since Python's `$` also matches before a final newline).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class State(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    TIMEOUT = "timeout"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def live(self) -> bool:
        return self not in TERMINAL


TERMINAL = frozenset({State.STOPPED, State.FAILED, State.TIMEOUT})
_ENDS = {State.STOPPING, State.STOPPED, State.FAILED, State.TIMEOUT}
ALLOWED: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.STARTING, State.READY, *_ENDS}),
    State.STARTING: frozenset({State.READY, *_ENDS}),
    State.READY: frozenset(_ENDS),
    State.STOPPING: frozenset({State.STOPPED, State.FAILED, State.TIMEOUT}),
    State.STOPPED: frozenset(),
    State.FAILED: frozenset(),
    State.TIMEOUT: frozenset(),
}


@dataclass
class Session(StateRecord):
    NOUN: ClassVar[str] = "session"
    STATES: ClassVar[type[StrEnum]] = State  # type: ignore[misc]
    ALLOWED: ClassVar[Mapping[Any, frozenset[Any]]] = ALLOWED
    STAMPS: ClassVar[Mapping[str, str]] = {"ready": "ready_at"}

    id: str
    name: str
    recipe: str
    backend: str
    target: str
    state: State = State.PENDING
    reason: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    # What the launch asked for beyond the recipe (`--set` keys): a relaunch asks again.
    overrides: dict[str, Any] = field(default_factory=dict)
    handle: dict[str, Any] | None = None
    endpoints: list[str] = field(default_factory=list)
    model: str = ""
    api_flavour: str = "openai"
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    ready_at: float | None = None
    ended_at: float | None = None
    last_activity: float = field(default_factory=time.time)
    idle_timeout_s: int | None = None
    max_lifetime_s: int | None = None
    # The target's own limit (SLURM --time, Tapis maxMinutes, a pod's time_to_stop) and when
    # it ends the session (epoch; None until it runs), as its last poll said.
    time_limit_s: int | None = None
    ends_at: float | None = None
    expiry_warned: bool = False  # the `expiring` event was sent
    idle_warned_at: float | None = None  # last_activity when `idle-expiring` was sent
    owner: str = ""
    unreachable: bool = False
    # Ready, but its engine (or some replicas) stopped answering health checks: the gateway
    # routes around `degraded_endpoints`; cleared when the probes pass again (readiness.py).
    degraded: bool = False
    degraded_reason: str = ""
    degraded_endpoints: list[str] = field(default_factory=list)
    stop_requested: bool = False  # by a user or autostop: an engine ending now is no failure
    exit_code: int | None = None
    log_tail: str = ""
    version: int = 0

    def timing(self, now: float | None = None) -> dict[str, Any]:
        """How long it has: the nearer of the target's end and the max lifetime (autostop),
        and, while ready, when idle autostop would stop it. None where nothing limits it."""
        now = time.time() if now is None else now
        bounds = []  # (ends at, limit)
        if self.ends_at is not None:
            bounds.append((self.ends_at, self.time_limit_s))
        if self.max_lifetime_s:
            bounds.append((self.created_at + self.max_lifetime_s, self.max_lifetime_s))
        limits = [x for x in (self.time_limit_s, self.max_lifetime_s) if x]
        if bounds:
            ends, limit = min(bounds, key=lambda b: b[0])
        else:
            ends, limit = None, min(limits) if limits else None
        live = self.state.live
        idle = None
        if live and self.state == State.READY and self.idle_timeout_s:
            idle = max(0, round(self.idle_timeout_s - (now - self.last_activity)))
        return {"time_limit_s": limit,
                "time_left_s": max(0, round(ends - now)) if live and ends is not None else None,
                "ends_at": _iso(ends) if ends is not None else None,
                "idle_stop_in_s": idle}

    def public(self) -> dict[str, Any]:
        """The JSON model front ends show: no handle internals beyond what users need."""
        data = self.to_dict()
        data.pop("spec", None)
        data.pop("handle", None)
        for internal in ("expiry_warned", "idle_warned_at"):
            data.pop(internal, None)
        now = time.time()
        data["age_s"] = round(now - self.created_at, 1)
        data["resources"] = {k: self.spec.get(k) for k in ("nodes", "gpus", "cpus", "memory_mb",
                                                           "time_s", "replicas")}
        data.update(self.timing(now))
        return data


def _iso(ts: float) -> str:
    """ISO 8601 in UTC, to the second (what `ends_at` carries)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
