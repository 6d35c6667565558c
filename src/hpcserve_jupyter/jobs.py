"""Jobs: one-off runs (a batch-inference file, a task) and their state machine.

    pending -> starting -> running -> done
         \\-----------\\----------\\-> failed | cancelled | timeout

A job starts, processes its input, writes its output and ends, releasing what it held. It is
stored and evented like a session; allowed transitions live only here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from .records import StateRecord

KINDS = ("batch", "task")


class JobState(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"

    @property
    def terminal(self) -> bool:
        return self in JOB_TERMINAL

    @property
    def live(self) -> bool:
        return self not in JOB_TERMINAL


JOB_TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT})
_ENDS = frozenset({JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT})
JOB_ALLOWED: dict[JobState, frozenset[JobState]] = {  # terminal states allow nothing
    JobState.PENDING: frozenset({JobState.STARTING, JobState.RUNNING, JobState.DONE, *_ENDS}),
    JobState.STARTING: frozenset({JobState.RUNNING, JobState.DONE, *_ENDS}),
    JobState.RUNNING: frozenset({JobState.DONE, *_ENDS}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.TIMEOUT: frozenset(),
}


@dataclass
class Job(StateRecord):
    NOUN: ClassVar[str] = "job"
    STATES: ClassVar[type[StrEnum]] = JobState  # type: ignore[misc]
    ALLOWED: ClassVar[Mapping[Any, frozenset[Any]]] = JOB_ALLOWED
    STAMPS: ClassVar[Mapping[str, str]] = {"running": "running_at"}

    id: str
    name: str
    kind: str  # batch | task
    recipe: str
    backend: str
    target: str
    input: str  # the input file or directory as the user named it (a local path)
    output: str  # where the output lands locally (a JSONL file, or a directory for tasks)
    state: JobState = JobState.PENDING
    reason: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    handle: dict[str, Any] | None = None
    concurrency: int = 8
    total: int = 0
    done: int = 0
    failed: int = 0
    resumed: int = 0  # answers taken over from an earlier run (--resume)
    resume_of: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    running_at: float | None = None
    ended_at: float | None = None
    owner: str = ""
    unreachable: bool = False
    cancel_requested: bool = False
    fetched: bool = False  # the output was copied back from the target
    exit_code: int | None = None
    log_tail: str = ""
    version: int = 0

    @property
    def elapsed_s(self) -> float:
        return round((self.ended_at or time.time()) - self.created_at, 1)

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate of this run's answers so far (None until there is one)."""
        if self.state.terminal:
            return 0.0 if self.state == JobState.DONE else None
        new = self.done - self.resumed
        if self.state != JobState.RUNNING or not self.running_at or new <= 0 or not self.total:
            return None
        rate = new / max(time.time() - self.running_at, 1e-3)
        return round(max(self.total - self.done, 0) / rate, 1)

    def public(self) -> dict[str, Any]:
        """The JSON model front ends show (no handle internals, no spec)."""
        data = self.to_dict()
        data.pop("spec", None)
        data.pop("handle", None)
        data["elapsed_s"] = self.elapsed_s
        data["eta_s"] = self.eta_s
        data["resources"] = {k: self.spec.get(k) for k in ("gpus", "cpus", "memory_mb", "time_s")}
        return data
