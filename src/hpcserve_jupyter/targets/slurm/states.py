"""SLURM job states -> target phases, and parsing of squeue / sacct output.

One `squeue` per cluster per tick covers every job of that cluster; `sacct` runs only for jobs
that left the queue (or ended), in one call for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..base import Phase, exit_text

# job id, state, reason, nodes, time limit (%l), time left (%L; the limit while pending)
SQUEUE_FORMAT = "%i|%T|%r|%N|%l|%L"
SACCT_FIELDS = "JobIDRaw,State,ExitCode,Reason"

_PHASES = {
    "PENDING": Phase.PENDING, "REQUEUED": Phase.PENDING, "REQUEUE_HOLD": Phase.PENDING,
    "REQUEUE_FED": Phase.PENDING, "SUSPENDED": Phase.PENDING, "RESV_DEL_HOLD": Phase.PENDING,
    "CONFIGURING": Phase.RUNNING, "RUNNING": Phase.RUNNING, "RESIZING": Phase.RUNNING,
    "SIGNALING": Phase.RUNNING, "STAGE_OUT": Phase.STOPPING, "COMPLETING": Phase.STOPPING,
    "STOPPED": Phase.STOPPING,
    "CANCELLED": Phase.STOPPED, "COMPLETED": Phase.EXITED, "FAILED": Phase.EXITED,
    "NODE_FAIL": Phase.EXITED, "OUT_OF_MEMORY": Phase.EXITED, "BOOT_FAIL": Phase.EXITED,
    "DEADLINE": Phase.EXITED, "PREEMPTED": Phase.EXITED, "REVOKED": Phase.EXITED,
    "SPECIAL_EXIT": Phase.EXITED, "TIMEOUT": Phase.TIMEOUT,
}
ENDED = frozenset(k for k, v in _PHASES.items()
                  if v in (Phase.STOPPED, Phase.EXITED, Phase.TIMEOUT))


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: str
    reason: str = ""
    nodes: str = ""
    exit_code: int | None = None
    signal: int | None = None
    time_limit_s: int | None = None  # None: UNLIMITED, or not listed (sacct)
    time_left_s: int | None = None

    @property
    def phase(self) -> Phase:
        return _PHASES.get(self.state, Phase.RUNNING)

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def describe(self) -> str:
        if self.state == "PENDING":
            return f"PENDING: {self.reason}" if self.reason and self.reason != "None" else \
                "PENDING"
        if self.state == "CANCELLED":
            return "the job was cancelled (scancel)"
        if self.state == "TIMEOUT":
            return "the job reached its time limit"
        if self.state == "OUT_OF_MEMORY":
            return "the job ran out of memory"
        if self.state in ("NODE_FAIL", "BOOT_FAIL"):
            return f"the job's node failed ({self.state})"
        if self.exit_code is not None:
            sig = f", signal {self.signal}" if self.signal else ""
            return f"the job ended {self.state} ({exit_text(self.exit_code)}{sig})"
        return f"the job ended {self.state}"


def _state(raw: str) -> str:
    # sacct prints "CANCELLED by 1000"; squeue never adds words.
    return raw.split()[0].rstrip("+") if raw.strip() else "UNKNOWN"


def parse_squeue(text: str) -> dict[str, JobInfo]:
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4 or not parts[0]:
            continue
        job_id = parts[0].split("_")[0]
        limit, left = (slurm_seconds(parts[4]), slurm_seconds(parts[5])) if len(parts) >= 6 \
            else (None, None)
        jobs[job_id] = JobInfo(job_id, _state(parts[1]), parts[2], parts[3],
                               time_limit_s=limit, time_left_s=left)
    return jobs


def slurm_seconds(text: str) -> int | None:
    """squeue's `[D-]HH:MM:SS` / `MM:SS` durations; None for UNLIMITED, NOT_SET, INVALID."""
    from ...durations import parse_duration

    text = text.strip()
    if not text or not text[0].isdigit():
        return None
    try:
        return parse_duration(text)
    except ValueError:  # "0:00" (nothing left): parse_duration wants a positive duration
        return 0 if set(text) <= set("0:-") else None


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """`sacct -P -n -o JobIDRaw,State,ExitCode,Reason`: the job's own line, not its steps."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0] or "." in parts[0]:
            continue
        code, _, sig = parts[2].partition(":")
        jobs[parts[0]] = JobInfo(parts[0], _state(parts[1]), parts[3] if len(parts) > 3 else "",
                                 exit_code=int(code) if code.isdigit() else None,
                                 signal=int(sig) if sig.isdigit() else None)
    return jobs


def parse_jobcomp(text: str) -> dict[str, JobInfo]:
    """`sacct -c` (jobcomp/filetxt, when there is no slurmdbd) prints the same columns."""
    return parse_sacct(text)
