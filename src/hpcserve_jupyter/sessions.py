"""Sessions: one launched recipe and its state machine. Allowed transitions live only here.

    pending -> starting -> ready -> stopping -> stopped
         \\-----------\\--------\\-> failed | timeout
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from .errors import HpcserveError

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


class InvalidTransition(HpcserveError):
    http_status = 409


@dataclass
class Session:
    id: str
    name: str
    recipe: str
    backend: str
    target: str
    state: State = State.PENDING
    reason: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
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
    owner: str = ""
    unreachable: bool = False
    stop_requested: bool = False  # by a user or autostop: an engine ending now is no failure
    exit_code: int | None = None
    log_tail: str = ""
    version: int = 0

    def transition(self, new: State, reason: str = "") -> bool:
        """Move to `new`; False when already there, InvalidTransition when not allowed."""
        new = State(new)
        if new == self.state:
            if reason:
                self.reason = reason
            return False
        if new not in ALLOWED[self.state]:
            raise InvalidTransition(f"session {self.name} cannot go from {self.state} to {new}")
        now = time.time()
        self.state, self.reason, self.updated_at = new, reason, now
        if new == State.READY:
            self.ready_at = now
        if new.terminal:
            self.ended_at = now
        return True

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = str(self.state)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Session:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["state"] = State(known.get("state", "pending"))
        return cls(**known)

    def public(self) -> dict[str, Any]:
        """The JSON model front ends show: no handle internals beyond what users need."""
        data = self.to_dict()
        data.pop("spec", None)
        data.pop("handle", None)
        data["age_s"] = round(time.time() - self.created_at, 1)
        data["resources"] = {k: self.spec.get(k) for k in ("nodes", "gpus", "cpus", "memory_mb",
                                                           "time_s", "replicas")}
        return data
