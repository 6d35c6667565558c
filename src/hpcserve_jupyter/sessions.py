"""Sessions: one launched recipe and its state machine. Allowed transitions live only here.

    pending -> starting -> ready -> stopping -> stopped
         \\-----------\\--------\\-> failed | timeout
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
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

    def public(self) -> dict[str, Any]:
        """The JSON model front ends show: no handle internals beyond what users need."""
        data = self.to_dict()
        data.pop("spec", None)
        data.pop("handle", None)
        data["age_s"] = round(time.time() - self.created_at, 1)
        data["resources"] = {k: self.spec.get(k) for k in ("nodes", "gpus", "cpus", "memory_mb",
                                                           "time_s", "replicas")}
        return data
