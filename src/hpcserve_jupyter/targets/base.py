"""The Target contract: where a ServeSpec runs. A target never knows which engine it runs.

It receives argv/env/ports/resources (a ServeSpec plus per-session secrets) and returns a
JSON handle (pid, job id, pod id...) that the session store keeps, so a restarted manager can
poll, stop and read logs of the same process, job or pod.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from ..errors import BadInput, RecipeError
from ..spec import API_KEY, ServeSpec
from ..yamlfile import explain


@dataclass(frozen=True)
class LaunchRequest:
    session_id: str
    name: str
    spec: ServeSpec
    workdir: Path  # the session's local directory (logs for local targets, copies of remote files)
    secrets: Mapping[str, str] = field(repr=False, default_factory=dict)
    # Handles of this target's other live sessions, so a target can avoid their GPUs and ports.
    siblings: tuple[Mapping[str, Any], ...] = ()
    # One-off jobs: files (name -> local path, a file or a directory) the target places in the
    # job's directory before it starts argv, where the JOBDIR placeholder points.
    files: Mapping[str, Path] = field(default_factory=dict)

    def secret_env(self) -> dict[str, str]:
        """The environment variables the engine reads its secrets from (never persisted)."""
        return {env: self.secrets[key] for env, key in self.spec.secret_env if key in self.secrets}

    def placeholder_values(self) -> dict[str, str]:
        values = {}
        if "api_key" in self.secrets:
            values[API_KEY] = self.secrets["api_key"]
        return values


class Phase(StrEnum):
    """What a target can tell about a handle; the manager turns it into a session state."""

    PENDING = "pending"  # queued (SLURM PENDING, pod REQUESTED...)
    RUNNING = "running"  # the engine process runs; health decides starting vs ready
    STOPPING = "stopping"
    EXITED = "exited"  # ended by itself: exit_code and log_tail say why
    STOPPED = "stopped"  # ended by a stop request or cancelled outside the tool
    TIMEOUT = "timeout"  # the scheduler's time limit ended it
    UNREACHABLE = "unreachable"  # the target did not answer: state unknown, not failed


def exit_text(code: int) -> str:
    """`exit code N`, naming the signal when the engine was killed by one: negative codes
    come from Python's process API, 128+N from a shell or container runtime (137 = SIGKILL,
    often the out-of-memory killer), so users see "killed" and not a bare number."""
    number = -code if code < 0 else code - 128 if 128 < code < 128 + 65 else 0
    try:
        name = signal.Signals(number).name if number else ""
    except ValueError:
        name = ""
    return f"exit code {code}" + (f": killed by {name}" if name else "")


def job_file_name(name: str) -> str:
    """A name inside a job's directory: one plain path component, never `..` or absolute."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise BadInput(f"{name!r} is not a file name inside a job's directory")
    return name


@dataclass
class TargetStatus:
    phase: Phase
    reason: str = ""
    exit_code: int | None = None
    log_tail: str | None = None
    endpoints: list[str] | None = None  # base URLs, one per replica, once known
    handle_update: dict[str, Any] | None = None  # merged into the stored handle
    # The target's own time limit (seconds) and, once it runs, what is left of it as of this
    # poll: SLURM's squeue %l/%L, Tapis maxMinutes, a pod's time_to_stop. None: unknown.
    time_limit_s: int | None = None
    time_left_s: float | None = None


@dataclass(frozen=True)
class SecretSetting:
    """A secret a target reads from an environment variable: how to ask for it, and the
    variable's NAME (front ends set it; the value never leaves the process that reads it)."""

    label: str
    env: str


class Target:
    """Base class of targets; subclasses implement the async methods below.

    `settings_model` validates the target's configuration (one entry of targets.yaml) once,
    here, with the entry's file and line in the error: `self.settings` is the result.
    """

    kind: ClassVar[str]
    settings_model: ClassVar[type[BaseModel]]
    # Whether `adopt` can find what an interrupted launch started (see adopt).
    can_adopt: ClassVar[bool] = False
    # Whether it runs one-off jobs: stages LaunchRequest.files into a job directory (the
    # JOBDIR placeholder) and implements read_file and fetch on it.
    runs_jobs: ClassVar[bool] = False

    def __init__(self, name: str, config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        source = config.pop("_source", (None, None))  # (file, line) of the entry, for errors
        self.name = name
        # Images one-off jobs may run here (shell-style patterns); None: no list.
        allowed = config.pop("allowed_images", None)
        if allowed is not None and (not isinstance(allowed, list) or
                                    not all(isinstance(a, str) and a for a in allowed)):
            raise RecipeError(f"target {name!r}: allowed_images must be a list of image names "
                              "or patterns", path=source[0], line=source[1])
        self.allowed_images: list[str] | None = allowed
        try:
            self.settings = self.settings_model.model_validate(config)
        except ValidationError as exc:
            raise RecipeError(f"target {name!r}: {explain(exc.errors()[0])}", path=source[0],
                              line=source[1]) from None

    async def launch(self, req: LaunchRequest) -> dict[str, Any]:
        """Start the engine(s); return the handle. Raise LaunchError/BadInput with a reason."""
        raise NotImplementedError

    async def poll(self, handles: Mapping[str, Mapping[str, Any]]) -> dict[str, TargetStatus]:
        """Status of many sessions in one batched call (one squeue / list_pods per tick)."""
        raise NotImplementedError

    async def stop(self, handle: Mapping[str, Any]) -> None:
        """Stop the engine(s); idempotent, returns once they are gone (or the grace ran out)."""
        raise NotImplementedError

    async def read_logs(self, handle: Mapping[str, Any], offset: int = 0) -> tuple[str, int]:
        """Log text from byte `offset` on and the new offset, for tail and follow."""
        raise NotImplementedError

    async def endpoints(self, handle: Mapping[str, Any]) -> list[str]:
        """Base URLs the client can reach from here (tunnel ends for remote targets)."""
        raise NotImplementedError

    async def adopt(self, session_id: str, name: str) -> dict[str, Any] | None:
        """What a launch interrupted before its handle was stored started (found by the session
        mark, job name or pod id): a handle to adopt, or None once anything found was
        cancelled. Targets that can look set `can_adopt`; for the others the manager marks such
        a session failed."""
        return None

    async def read_file(self, handle: Mapping[str, Any], name: str,
                        offset: int = 0) -> tuple[bytes, int]:
        """Bytes of a file in a job's directory from `offset` on (b"" if it does not exist
        yet) and the new offset: a job's progress and output while it runs."""
        raise NotImplementedError

    async def fetch(self, handle: Mapping[str, Any], name: str, dest: Path) -> bool:
        """Copy a file or directory of a job's directory to `dest` (files 0600); False when
        it does not exist."""
        raise NotImplementedError

    async def release(self, handle: Mapping[str, Any]) -> None:
        """Free what an ended job left behind (a volume...) once its output was fetched;
        a target that keeps job files where users expect them (a job directory) does nothing."""

    def secret_settings(self) -> list[SecretSetting]:
        """The secrets this target reads from environment variables (names, not values)."""
        return []

    async def extend(self, handle: Mapping[str, Any], add_s: int) -> str | None:
        """Give a running session `add_s` more seconds where the target itself limits it;
        returns what the target answered. None: nothing here limits it but hpcserve's own
        max lifetime (which the manager raises). A target whose limit is fixed once set raises
        FixedLimit (the max lifetime may still grow); one that refuses raises Refused."""
        return None

    async def gpu_report(self, handle: Mapping[str, Any]) -> Any:
        """The use of the session's GPUs (a metrics.GpuReport), or why it is not known."""
        from ..metrics import GpuReport

        return GpuReport(reason=f"GPU use is not available on {self.kind} targets")

    @property
    def offline(self) -> bool:
        """Whether its engines cannot reach the model hub (`offline: true` in the settings):
        a hub model must be in its cache (`hpcserve pull`) before a launch."""
        return bool(getattr(self.settings, "offline", False))

    async def cached_model(self, repo_id: str, filename: str | None = None,
                           revision: str = "main") -> str | None:
        """Where its engines find this hub model in the target's model cache (a path there),
        or None: not cached, or a target that cannot tell."""
        return None

    async def close(self) -> None:
        """Release connections and tunnels; never stops sessions."""

    def describe(self) -> dict[str, Any]:
        """The JSON model front ends list (no secrets)."""
        return {"name": self.name, "kind": self.kind}
