"""The one session service under every face: the embedded facade (api.Hpcserve) runs it on a
private loop thread, the Jupyter server extension on the server's loop behind its REST API.

Each view front ends show (recipe summaries, target list, a target's secrets, the event
snapshot) and each rule (launch defaults, which secrets a target may be given) exists here
once; the faces only translate calls (blocking calls, HTTP requests) to it. No Jupyter imports.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import BadInput, NotFound
from .facade import SecretField
from .jobmanager import JobLimits, JobManager
from .jobs import Job
from .manager import SessionManager
from .recipes import Catalog, recipe_dirs
from .resolve import LaunchDefaults
from .sessions import Session
from .targets import load_target_configs


class SessionService:
    """Catalog, targets, secrets, sessions, one-off jobs and events, over one SessionManager
    (and the JobManager beside it)."""

    def __init__(self, manager: SessionManager, job_limits: JobLimits | None = None) -> None:
        self.manager = manager
        self.job_manager = JobManager(manager, job_limits)

    @classmethod
    def configured(cls, *, state_dir: Path | None = None, extra_recipe_dirs: Sequence[Path] = (),
                   targets_file: Path | None = None, defaults: LaunchDefaults | None = None,
                   on_config_error: Callable[[str], None] | None = None,
                   job_limits: JobLimits | None = None,
                   **manager_kwargs: Any) -> SessionService:
        """A service from a front end's settings: state directory, extra recipe directories
        (searched after the built-in and user ones), a targets file and launch defaults.

        A targets file that does not load is reported through `on_config_error` and leaves
        the default targets, so a server still starts and every target use says what is wrong.
        """
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        catalog = Catalog([*recipe_dirs(), *extra_recipe_dirs])
        configs = None
        if targets_file is not None:
            try:
                configs = load_target_configs(targets_file)
            except Exception as exc:
                if on_config_error is None:
                    raise
                on_config_error(f"targets file {targets_file}: {exc}")
        manager = SessionManager(state_dir, catalog=catalog, target_configs=configs,
                                 defaults=defaults, **manager_kwargs)
        return cls(manager, job_limits)

    async def start(self, *, monitor: bool = True) -> None:
        await self.manager.start(monitor=monitor)

    async def close(self) -> None:
        await self.manager.close()

    @property
    def home(self) -> Path:
        return self.manager.home

    # ------------------------------------------------------------------ catalog and targets

    def recipes(self) -> list[dict[str, Any]]:
        return [r.summary() for _, r in sorted(self.manager.catalog.recipes.items())]

    def recipe_errors(self) -> dict[str, str]:
        return {str(p): str(e) for p, e in self.manager.catalog.errors.items()}

    def recipe(self, name: str) -> dict[str, Any]:
        return self.manager.catalog.get(name).model_dump(mode="json")

    def targets(self) -> list[dict[str, Any]]:
        return [self.manager.target(n).describe() for n in sorted(self.manager.target_configs)]

    def target_secrets(self, target: str) -> list[SecretField]:
        """The secrets a target reads from environment variables, as front ends ask for them:
        names and whether each is set in THIS process's environment (never values)."""
        return [SecretField(label=s.label, env=s.env, is_set=bool(os.environ.get(s.env)))
                for s in self.manager.target(target).secret_settings()]

    def set_target_secrets(self, target: str, values: Mapping[str, str]) -> None:
        """Set secrets in this process's environment, where its targets read them, only under
        the names target_secrets(target) lists (a front end cannot set arbitrary variables);
        empty values are ignored. Values are never logged or echoed."""
        allowed = {f["env"] for f in self.target_secrets(target)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise BadInput(f"target {target!r} reads no secret from {', '.join(unknown)}",
                           hint="its secrets: " + (", ".join(sorted(allowed)) or "none"))
        os.environ.update({k: str(v) for k, v in values.items() if v})

    # ------------------------------------------------------------------ sessions

    async def launch(self, recipe: str, *, backend: str | None = None, target: str = "local",
                     name: str | None = None, overrides: Mapping[str, Any] | None = None,
                     owner: str | None = None) -> Session:
        return await self.manager.launch(recipe, backend=backend, target=target, name=name,
                                         overrides=overrides, owner=owner)

    async def wait(self, key: str, *, timeout: float | None = None,
                   progress: Callable[[Session], None] | None = None) -> Session:
        return await self.manager.wait(key, timeout=timeout, progress=progress)

    def sessions(self, *, live_only: bool = False) -> list[Session]:
        return self.manager.sessions(live_only=live_only)

    def get(self, key: str) -> Session:
        return self.manager.get(key)

    def find(self, session_id: str) -> Session | None:
        """The stored session with exactly this id, as it is now (None if there is none)."""
        return self.manager.store.get(session_id)

    async def stop(self, key: str) -> Session:
        return await self.manager.stop(key)

    def keepalive(self, key: str) -> Session:
        return self.manager.keepalive(key)

    def touch(self, session_id: str) -> None:
        self.manager.touch(session_id)

    async def refresh(self) -> list[Session]:
        """One monitor pass now; the live sessions after it."""
        await self.manager.tick()
        return self.manager.sessions(live_only=True)

    def api_key(self, session: Session | str) -> str:
        return self.manager.api_key(session)

    async def logs(self, key: str, tail: int | None = 100) -> str:
        return await self.manager.logs(key, tail)

    def follow_logs(self, key: str, *, from_start: bool = True) -> AsyncIterator[str]:
        return self.manager.follow_logs(key, from_start=from_start)

    # ------------------------------------------------------------------ one-off jobs

    async def submit_job(self, recipe: str, input: str | Path, *, target: str = "local",
                         backend: str | None = None, name: str | None = None,
                         output: str | Path | None = None, concurrency: int = 8,
                         resume: str | None = None, overrides: Mapping[str, Any] | None = None,
                         owner: str | None = None, runner: str = "auto") -> Job:
        return await self.job_manager.submit(
            recipe, input, target=target, backend=backend, name=name, output=output,
            concurrency=concurrency, resume=resume, overrides=overrides, owner=owner,
            runner=runner)

    def jobs(self, *, live_only: bool = False) -> list[Job]:
        return self.job_manager.jobs(live_only=live_only)

    def get_job(self, key: str) -> Job:
        return self.job_manager.get(key)

    async def wait_job(self, key: str, *, timeout: float | None = None,
                       progress: Callable[[Job], None] | None = None) -> Job:
        return await self.job_manager.wait(key, timeout=timeout, progress=progress)

    async def cancel_job(self, key: str) -> Job:
        return await self.job_manager.cancel(key)

    async def job_logs(self, key: str, tail: int | None = 100) -> str:
        return await self.job_manager.logs(key, tail)

    def follow_job_logs(self, key: str) -> AsyncIterator[str]:
        return self.job_manager.follow_logs(key)

    async def job_results(self, key: str) -> Path:
        """The job's output file on this machine (fetched now while the job runs)."""
        return await self.job_manager.results(key)

    # ------------------------------------------------------------------ events

    def events(self, key: str | None = None, after: int = 0) -> list[dict[str, Any]]:
        """The stored event log (launch, state changes, keepalives), optionally of one session
        or job."""
        sid = None
        if key:
            try:
                sid = self.manager.get(key).id
            except NotFound as exc:
                jobs = self.job_manager.store.find(key)
                if not jobs:
                    raise exc from None
                sid = self.job_manager.get(key).id
        return self.manager.events(sid, after)

    def snapshot(self) -> dict[str, Any]:
        """The first event of every stream: the live sessions as they are now."""
        return {"type": "snapshot", "ts": time.time(),
                "sessions": [s.public() for s in self.manager.sessions(live_only=True)],
                "jobs": [j.public() for j in self.job_manager.jobs(live_only=True)]}

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue the manager pushes every event into; take the snapshot right after, with no
        await in between, so no change falls between the two."""
        return self.manager.subscribe()

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.manager.unsubscribe(queue)

    def subscribed(self, queue: asyncio.Queue[dict[str, Any]]) -> bool:
        """False once the manager dropped a subscriber that fell too far behind."""
        return self.manager.subscribed(queue)
