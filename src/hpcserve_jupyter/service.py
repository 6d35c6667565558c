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

from . import jupyterai
from .errors import BadInput, NotFound, NotReady
from .facade import SecretField
from .gatewaykeys import ALL, GatewayKey, GatewayKeys, check_scope
from .jobmanager import JobLimits, JobManager
from .jobs import Job
from .manager import SessionManager
from .recipes import Catalog, recipe_dirs
from .resolve import LaunchDefaults
from .sessions import Session
from .targets import load_target_configs

AI_KEY_LABEL = "jupyter-ai:"  # + the session id: the gateway key Jupyter AI holds


class SessionService:
    """Catalog, targets, secrets, sessions, one-off jobs and events, over one SessionManager
    (and the JobManager beside it)."""

    def __init__(self, manager: SessionManager, job_limits: JobLimits | None = None) -> None:
        self.manager = manager
        self.job_manager = JobManager(manager, job_limits)
        self.keys = GatewayKeys(manager.store)

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

    async def metrics(self, key: str) -> dict[str, Any]:
        """The session's live serving metrics and GPU use (scraped now if due; asking keeps
        it watched for a minute: sessionmetrics.py)."""
        return await self.manager.metrics.read(self.manager.get(key))

    async def relaunch(self, key: str, *, name: str | None = None,
                       owner: str | None = None) -> Session:
        """A new session like `key` (recipe, backend, target, overrides), next-numbered."""
        return await self.manager.relaunch(key, name=name, owner=owner)

    async def extend(self, key: str, time: str | int) -> tuple[Session, str]:
        """More time for a live session (`time`: '30m', '2h', seconds); what the target said."""
        from .durations import parse_duration
        from .errors import BadInput, shown

        try:
            add = parse_duration(time)
        except ValueError as exc:
            raise BadInput(f"invalid time {shown(time)}: {exc}",
                           hint="a duration such as 30m, 2h or 1:30:00") from None
        return await self.manager.extend(key, add)

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

    # ------------------------------------------------------------------ gateway keys

    def create_gateway_key(self, label: str | None = None,
                           sessions: Sequence[str] | None = None) -> GatewayKey:
        """A key for the OpenAI-compatible gateway only, for `sessions` (names or ids; None
        or '*': every session). The answer holds the clear key, which is never shown again.

        Each session must exist now, named by its name or full id (a typo is refused): a name
        also covers a session launched again under it, an id that one session only."""
        scope = check_scope([ALL] if sessions is None else list(sessions))
        if scope != [ALL]:
            scope = [self._scope_entry(entry) for entry in scope]
        return self.keys.create(label, scope)

    def _scope_entry(self, entry: str) -> str:
        if not any(entry in (s.id, s.name) for s in self.manager.store.find(entry)):
            raise NotFound(f"no session {entry!r} to scope the key to",
                           hint="name existing sessions by name or full id (hpcserve status "
                           "--all), or give '*' for every session")
        return entry

    def gateway_keys(self) -> list[GatewayKey]:
        """Every gateway key (revoked ones too), never the keys themselves."""
        return self.keys.list()

    def revoke_gateway_key(self, key: str) -> GatewayKey:
        """Revoke a gateway key by id or label: the gateway refuses it from the next request."""
        return self.keys.revoke(key)

    def check_gateway_key(self, presented: str) -> GatewayKey | None:
        """The unrevoked gateway key `presented` is, else None (the gateway's check)."""
        return self.keys.check(presented)

    # ------------------------------------------------------------------ Jupyter AI

    def use_in_jupyter_ai(self, key: str, *, api_base: str | None, path: Path,
                          default: bool = False) -> dict[str, Any]:
        """Register a chat session as a Jupyter AI (Jupyternaut) custom model that reaches it
        through this server's gateway (`api_base`) with a gateway key scoped to it alone: never
        the Jupyter token, which Jupyter AI would store and show in clear text. Registering
        again replaces the entry and its key; the entry goes when the session ends. `path` is
        Jupyter AI's config.json, found by the caller (a Jupyter path: jupyter/aiconfig.py)."""
        if not api_base:
            raise BadInput("Jupyter AI chats through the gateway of the Jupyter server running "
                           "the hpcserve extension, and this process has none",
                           hint="run it from a notebook of that server, or set "
                           "HPCSERVE_SERVER_URL (and HPCSERVE_SERVER_TOKEN) for the CLI")
        session = self.get(key)
        if session.state.terminal or session.stop_requested:
            raise NotReady(f"session {session.name!r} is {session.state}",
                           hint=f"launch it again: %serve launch {session.recipe}")
        spec = session.spec or {}
        if session.api_flavour != "openai" or spec.get("category") not in (None, "inference"):
            raise BadInput(f"session {session.name!r} is not a chat model "
                           f"({spec.get('category') or session.api_flavour})",
                           hint="Jupyter AI can chat with sessions of inference recipes")
        self._revoke_ai_keys(session.id)
        gkey = self.keys.create(AI_KEY_LABEL + session.id, [session.id])
        assert gkey.key is not None
        model = jupyterai.AiModel(
            session_id=session.id, name=session.name, api_base=api_base.rstrip("/"),
            api_key=gkey.key, description=f"hpcserve: {session.recipe} ({session.backend}) "
            f"on {session.target}")
        try:
            jupyterai.register(model, default=default, path=path)
        except BaseException:
            self.keys.revoke(gkey.id)
            raise
        return {"session_id": session.id, "name": session.name, "model_id": model.model_id,
                "entry_id": model.entry_id, "api_base": model.api_base, "default": default,
                "key_id": gkey.id, "config": str(path)}

    def drop_from_jupyter_ai(self, key: str, *, path: Path) -> dict[str, Any]:
        """Remove the session's Jupyter AI entry (from the config.json at `path`) and revoke
        its gateway key."""
        session = self.get(key)
        removed = jupyterai.unregister(session.id, path=path)
        revoked = self._revoke_ai_keys(session.id)
        return {"session_id": session.id, "name": session.name,
                "removed": bool(removed or revoked)}

    def forget_ended_in_jupyter_ai(self, path: Path) -> list[str]:
        """Entries (in the config.json at `path`) and keys of sessions that ended: removed.
        Run when sessions end."""
        live = {s.id for s in self.sessions(live_only=True) if not s.stop_requested}
        ended = {e["session_id"] for e in jupyterai.registered(path=path)} - live
        ended |= {k.label[len(AI_KEY_LABEL):] for k in self.keys.list()
                  if k.label.startswith(AI_KEY_LABEL) and not k.revoked} - live
        for sid in sorted(ended):
            jupyterai.unregister(sid, path=path)
            self._revoke_ai_keys(sid)
        return sorted(ended)

    def _revoke_ai_keys(self, session_id: str) -> int:
        mine = [k for k in self.keys.list()
                if k.label == AI_KEY_LABEL + session_id and not k.revoked]
        for k in mine:
            self.keys.revoke(k.id)
        return len(mine)

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
