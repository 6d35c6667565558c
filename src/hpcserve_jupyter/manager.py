"""SessionManager: the only owner of session state.

It launches and stops sessions, runs one monitor loop that polls each target once per tick for
all of that target's sessions, probes readiness (the engine's health endpoint answers, not
"process alive"), enforces autostop (idle timeout, max lifetime), re-attaches to live sessions
after a restart, and publishes every change to subscribers. No Jupyter imports here.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import re
import secrets as _random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from . import health, paths
from .errors import (
    BadInput,
    HpcserveError,
    LaunchError,
    NameInUse,
    NotFound,
    NotReady,
    TargetUnreachable,
)
from .eventpub import EventPublisher
from .monitorlock import MonitorLock
from .readiness import ReadyHealth
from .recipes import Catalog
from .resolve import LaunchDefaults, resolve
from .secrets import master_key, redact, session_api_key
from .sessionclock import SessionClock
from .sessionmetrics import SessionMetrics
from .sessions import NAME_PATTERN, Session, State
from .spec import ServeSpec
from .store import StaleSession, Store
from .targets import load_target_configs, make_target
from .targets.base import LaunchRequest, Phase, Target, TargetStatus
from .weights.formats import hub_ref

log = logging.getLogger(__name__)


class SessionManager(EventPublisher, SessionClock):
    def __init__(self, home: Path | None = None, *, catalog: Catalog | None = None,
                 target_configs: dict[str, dict[str, Any]] | None = None,
                 poll_interval: float = 2.0, start_timeout: float = 1800.0,
                 defaults: LaunchDefaults | None = None, owner: str | None = None,
                 launch_grace: float = 60.0, expiry_warning: float = 600.0,
                 health_interval: float = 15.0, health_failures: int = 2) -> None:
        self.home = home or paths.home()
        self.store = Store(self.home / "sessions.db")
        self._monitor_lock = MonitorLock(self.home / "monitor.lock")
        self._master = master_key(self.home)
        self._catalog = catalog
        self._target_configs = target_configs
        self._targets: dict[str, Target] = {}
        self.poll_interval = poll_interval
        self.start_timeout = start_timeout
        self.defaults = defaults or LaunchDefaults()
        self.launch_grace = launch_grace  # after this, a launch without handle was interrupted
        self.expiry_warning = expiry_warning  # seconds left when `expiring` is said
        self.ready_health = ReadyHealth(self._probe, self._degraded, interval=health_interval,
                                        failures=health_failures)
        self.metrics = SessionMetrics(self._client, self.api_key, self.target,
                                      min_interval=poll_interval)
        self.owner = owner or _whoami()
        self._init_events(self.store)
        self._monitor: asyncio.Task[None] | None = None
        self._closing = False
        self.close_timeout = 15.0  # how long close() lets a tick in flight finish
        self._http: httpx.AsyncClient | None = None
        self._tick_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.probe_interval = min(0.25, poll_interval)
        self.ticks = 0
        # What else is monitored on each tick (one-off jobs) and told of changes that other
        # processes wrote to the shared event log about things that are not sessions.
        self.tick_hooks: list[Callable[[], Awaitable[None]]] = []

    # ------------------------------------------------------------------ wiring

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog()
        return self._catalog

    @property
    def target_configs(self) -> dict[str, dict[str, Any]]:
        if self._target_configs is None:
            self._target_configs = load_target_configs()
        return self._target_configs

    def target(self, name: str) -> Target:
        if name not in self._targets:
            self._targets[name] = make_target(name, self.target_configs)
        return self._targets[name]

    def api_key(self, session: Session | str) -> str:
        sid = session if isinstance(session, str) else session.id
        return session_api_key(self._master, sid)

    async def start(self, *, monitor: bool = True) -> None:
        """Re-attach to live sessions (one poll of each target), then start the monitor loop."""
        await self.tick()
        if monitor and self._monitor is None:
            self._monitor = asyncio.create_task(self._loop(), name="hpcserve-monitor")

    async def close(self) -> None:
        """Stop monitoring, then release connections. Sessions keep running.

        In this order: no new tick starts, the tick in flight is let finish (its polls run in
        worker threads on the targets' connections; cancelling it would leave them running),
        and only then are the targets closed, so no poll ever runs on a closed target.
        """
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        if self._monitor:
            try:
                await asyncio.wait_for(asyncio.shield(self._monitor), self.close_timeout)
            except TimeoutError:  # a tick stuck on a target: give up on it
                self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
            self._monitor = None
        await self.ready_health.close()
        await self.metrics.close()
        # A tick run by someone else (refresh(), wait() without the monitor) ends first too.
        locked = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.close_timeout):
                locked = await self._tick_lock.acquire()
        for target in self._targets.values():
            with contextlib.suppress(Exception):
                await target.close()
        if locked:
            self._tick_lock.release()  # a tick waiting for it sees _closing and returns
        if self._http:
            await self._http.aclose()
            self._http = None
        self._monitor_lock.release()
        self.store.close()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0))
        return self._http

    # ------------------------------------------------------------------ queries

    def sessions(self, *, live_only: bool = False) -> list[Session]:
        return self.store.all(live_only=live_only)

    def get(self, key: str) -> Session:
        found = self.store.find(key)
        if not found:
            names = [s.name for s in self.store.all()] + [s.id for s in self.store.all()]
            from .errors import close_matches

            raise NotFound(f"no session {key!r}", hint=close_matches(key, names)
                           if names else "launch one first (hpcserve launch RECIPE)")
        live = [s for s in found if s.state.live]
        if len(live) > 1:
            raise BadInput(f"{key!r} matches several sessions: "
                           + ", ".join(f"{s.id} ({s.name})" for s in live),
                           hint="use the full session id")
        return (live or found)[0]

    def events(self, session_id: str | None = None, after: int = 0) -> list[dict[str, Any]]:
        return self.store.events(session_id, after)

    # ------------------------------------------------------------------ launch

    def resolve(self, recipe: str, backend: str | None, overrides: Mapping[str, Any]) -> ServeSpec:
        return resolve(recipe, backend, overrides, catalog=self.catalog, defaults=self.defaults)

    def _new_name(self, recipe: str) -> str:
        taken = set(self.store.names_like(recipe))
        n = 1
        while f"{recipe}-{n}" in taken:
            n += 1
        return f"{recipe}-{n}"

    async def launch(self, recipe: str, *, backend: str | None = None, target: str = "local",
                     name: str | None = None, overrides: Mapping[str, Any] | None = None,
                     owner: str | None = None) -> Session:
        """Validate everything, record the session, then start it on the target.

        Bad input fails before anything is recorded or started. A target that fails to start
        leaves a `failed` session with its reason, and nothing running.
        """
        overrides = dict(overrides or {})
        asked = dict(overrides)  # before the model cache adds its own
        spec = self.resolve(recipe, backend, overrides)
        tgt = self.target(target)
        spec = await self._cached_weights(tgt, spec, recipe, overrides)
        if name is not None and not re.fullmatch(NAME_PATTERN, name):
            raise BadInput(f"invalid session name {name!r}",
                           hint="use letters, digits, '.', '_' and '-' (at most 63 characters)")
        if name and self.store.name_in_use(name):
            raise NameInUse(f"a live session is already named {name!r}",
                           hint="choose another name or stop that session")
        session = Session(
            id=_random.token_hex(4), name=name or self._new_name(spec.recipe),
            recipe=spec.recipe, backend=spec.backend, target=target, spec=spec.to_dict(),
            overrides=_jsonable(asked), model=spec.served_model_name, api_flavour=spec.api_flavour,
            idle_timeout_s=spec.idle_timeout_s, max_lifetime_s=spec.max_lifetime_s,
            owner=owner or self.owner)
        self.store.insert(session, "created", f"{spec.recipe} with {spec.backend} on {target}")
        self._publish(session, "created")
        siblings = tuple(s.handle for s in self.store.all(live_only=True)
                         if s.target == target and s.handle and s.id != session.id)
        req = LaunchRequest(session_id=session.id, name=session.name, spec=spec,
                            workdir=self.session_dir(session), secrets=self._secrets(session),
                            siblings=siblings)
        try:
            handle = await tgt.launch(req)
        except HpcserveError as exc:
            self._set(session, State.FAILED, exc.message, event="launch-failed")
            raise
        except Exception as exc:  # a target bug must still leave a consistent record
            self._set(session, State.FAILED, f"launch failed: {exc}", event="launch-failed")
            raise LaunchError(f"launch on {target!r} failed: {exc}") from exc
        session.handle = handle
        self._write(session, "launched", "submitted to the target")
        self.wake()
        return session

    async def relaunch(self, key: str, *, name: str | None = None,
                       owner: str | None = None) -> Session:
        """A new session with the recipe, backend, target and overrides of `key` (live or
        ended), named like it with the next number (`chat-1` -> `chat-2`)."""
        old = self.get(key)
        return await self.launch(old.recipe, backend=old.backend, target=old.target,
                                 name=name or self._next_name(old.name),
                                 overrides=old.overrides, owner=owner)

    def _next_name(self, name: str) -> str:
        m = re.fullmatch(r"(.+)-(\d+)", name)
        base, n = (m.group(1), int(m.group(2))) if m else (name, 1)
        taken = set(self.store.names_like(base))
        n += 1
        while f"{base}-{n}" in taken:
            n += 1
        return f"{base}-{n}"

    async def _cached_weights(self, tgt: Target, spec: ServeSpec, recipe: str,
                              overrides: Mapping[str, Any]) -> ServeSpec:
        """A hub model the target's cache holds: the engine gets its local path, offline
        (HF_HUB_OFFLINE=1), so no node reaches for the hub. One the cache lacks on a target
        without internet (`offline: true`): refused now, not a job failing on the node."""
        ref = hub_ref(spec.model)
        if ref is None:
            return spec
        found = await tgt.cached_model(ref.repo_id, ref.filename)
        if found:
            return self.resolve(recipe, spec.backend, {**overrides, "model": found,
                                                       "env.HF_HUB_OFFLINE": "1"})
        if tgt.offline:
            raise BadInput(f"target {tgt.name!r} has no internet (offline: true) and its model "
                           f"cache lacks {ref}",
                           hint=f"run hpcserve pull {spec.recipe} --on {tgt.name} --backend "
                           f"{spec.backend} first (or %serve pull in a notebook)")
        return spec

    def session_dir(self, session: Session) -> Path:
        path = self.home / "sessions" / session.id
        path.parent.mkdir(exist_ok=True, mode=0o700)  # parents=True would make it 0755
        path.mkdir(exist_ok=True, mode=0o700)
        return path

    def _secrets(self, session: Session) -> dict[str, str]:
        return {"api_key": self.api_key(session)}

    # ------------------------------------------------------------------ stop / keepalive

    async def stop(self, key: str, reason: str = "stopped by user") -> Session:
        """Stop a session; stopping a stopped session is a no-op that returns it."""
        session = self.get(key)
        if session.state.terminal:
            return session
        if session.state != State.STOPPING or not session.stop_requested:
            session.stop_requested = True
            self._set(session, State.STOPPING, reason, event="stop")
        if session.handle:
            try:
                await self.target(session.target).stop(session.handle)
            except HpcserveError as exc:
                session = self.store.get(session.id) or session
                session.unreachable = True
                self._write(session, "stop-error", exc.message)
                raise
        for _ in range(5):
            session = self.store.get(session.id) or session
            if not session.state.live:
                break
            try:
                self._set(session, State.STOPPED, reason, event="stopped")
                break
            except StaleSession:
                continue  # the monitor recorded the exit meanwhile; read it again
        return session

    def keepalive(self, key: str) -> Session:
        session = self.get(key)
        if session.state.terminal:
            raise NotReady(f"session {session.name} is {session.state}; nothing to keep alive")
        self.store.touch(session.id)
        self.store.add_event(session, "keepalive")
        return self.store.get(session.id) or session

    def touch(self, session_id: str) -> None:
        self.store.touch(session_id)

    # ------------------------------------------------------------------ logs

    async def logs(self, key: str, tail: int | None = 100) -> str:
        session = self.get(key)
        if not session.handle:
            return session.log_tail
        text, _ = await self.target(session.target).read_logs(session.handle, 0)
        text = redact(text, [self.api_key(session)])
        if tail:
            text = "\n".join(text.splitlines()[-tail:])
        return text

    async def follow_logs(self, key: str, *, interval: float = 0.5,
                          from_start: bool = True) -> AsyncIterator[str]:
        """Log text as it is written, until the session ends."""
        session = self.get(key)
        if not session.handle:
            return
        tgt = self.target(session.target)
        offset = 0
        if not from_start:
            _, offset = await tgt.read_logs(session.handle, 0)
        key_ = self.api_key(session)
        while True:
            text, offset = await tgt.read_logs(session.handle, offset)
            if text:
                yield redact(text, [key_])
                continue
            current = self.store.get(session.id)
            if current is None or current.state.terminal:
                return
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ waiting

    async def wait(self, key: str, *, timeout: float | None = None,
                   progress: Callable[[Session], None] | None = None) -> Session:
        """Until the session is ready (or ends); calls `progress` on every change and each tick."""
        session = self.get(key)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self._monitor:
                await self.tick()
            session = self.store.get(session.id) or session
            if progress:
                progress(session)
            if session.state == State.READY or session.state.terminal:
                return session
            if deadline and time.monotonic() > deadline:
                raise NotReady(f"session {session.name} is still {session.state} after "
                               f"{timeout:.0f} s", hint="wait longer, or check its logs")
            await asyncio.sleep(min(self.poll_interval, 0.25))

    # ------------------------------------------------------------------ monitor

    def wake(self) -> None:
        """Run the next full tick now (after a launch or stop) instead of at the interval."""
        self._wake.set()

    async def _loop(self) -> None:
        while not self._closing:
            try:
                await self.tick()
            except Exception:  # the loop must survive any one bad tick
                log.exception("monitor tick failed")
            deadline = time.monotonic() + self.poll_interval
            while not self._closing and (left := deadline - time.monotonic()) > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), min(left, self.probe_interval))
                    break
                except TimeoutError:
                    pass
                try:
                    await self._probe_starting()
                except Exception:
                    log.exception("readiness probe failed")
            self._wake.clear()

    async def _probe_starting(self) -> None:
        """Between full ticks, probe only starting engines, so `ready` is seen within
        probe_interval of the engine answering without polling schedulers faster."""
        if not self._monitor_lock.held:
            return
        starting = [s for s in self.store.all(live_only=True)
                    if s.state == State.STARTING and s.endpoints and not s.unreachable]
        for s in starting:
            if await self._healthy(s):
                with contextlib.suppress(StaleSession):
                    self._set(s, State.READY, "serving", event="ready")

    @property
    def monitored(self) -> bool:
        """Whether this manager's monitor loop runs (else waiting callers tick themselves)."""
        return self._monitor is not None

    @property
    def monitoring(self) -> bool:
        """Whether this manager is the one that monitors the state directory."""
        return self._monitor_lock.try_acquire()

    async def tick(self) -> None:
        """One monitor pass: one batched poll per target, health probes, autostop.

        Only the manager holding the state directory's monitor lock acts; the others read
        what it writes (see monitorlock.py).
        """
        if self._closing:
            return
        self._follow_store()
        if not self.monitoring:
            self._tell_activity()
            return
        async with self._tick_lock:
            if self._closing:
                return
            self.ticks += 1
            by_target: dict[str, list[Session]] = defaultdict(list)
            for s in self.store.all(live_only=True):
                if s.handle:
                    by_target[s.target].append(s)
                elif time.time() - s.created_at > self.launch_grace:
                    # A launch that never recorded its handle (manager killed mid-launch).
                    with contextlib.suppress(StaleSession):
                        await self._recover_launch(s)
            await asyncio.gather(*(self._poll_target(t, ss) for t, ss in by_target.items()))
            self.ready_health.prune({s.id for ss in by_target.values() for s in ss})
            live = self.store.all(live_only=True)  # as the polls left them
            self._warn_expiring(live)
            self._tell_activity(live)
            await self.metrics.tick(live)
            for hook in self.tick_hooks:
                try:
                    await hook()
                except Exception:  # one failing monitor must not stop the others
                    log.exception("monitor hook %r failed", hook)

    async def _recover_launch(self, s: Session) -> None:
        """Ask the target whether a job/process of this interrupted launch exists: adopt it
        (the target returns its handle) or have it cancelled; only then is the session failed,
        so nothing is left running unknown. A target that cannot be asked is retried."""
        lost = "the launch did not complete (manager stopped during launch)"
        try:
            target = self.target(s.target)
            handle = await target.adopt(s.id, s.name) if target.can_adopt else None
        except TargetUnreachable as exc:
            if not s.unreachable:
                s.unreachable = True
                self._write(s, "unreachable", exc.message)
            return
        except HpcserveError as exc:
            self._set(s, State.FAILED, f"{lost}; the target could not be checked: "
                      f"{exc.message}", event="launch-lost")
            return
        if handle:
            s.handle, s.unreachable = dict(handle), False
            self._write(s, "adopted", "found running after an interrupted launch")
            self.wake()
        else:
            self._set(s, State.FAILED, lost + ("; nothing of it runs" if target.can_adopt else ""),
                      event="launch-lost")

    async def _poll_target(self, target_name: str, sessions: list[Session]) -> None:
        try:
            tgt = self.target(target_name)
            statuses = await tgt.poll({s.id: s.handle or {} for s in sessions})
        except HpcserveError as exc:
            statuses = {s.id: TargetStatus(Phase.UNREACHABLE, reason=exc.message) for s in sessions}
        except Exception as exc:
            if self._closing:
                # Cut short by close() (or by the interpreter's exit shutting the worker
                # threads down): it says nothing about the target, so nothing is recorded.
                log.debug("poll of target %s abandoned on close: %r", target_name, exc)
                return
            log.exception("polling target %s failed", target_name)
            statuses = {s.id: TargetStatus(Phase.UNREACHABLE, reason=str(exc)) for s in sessions}
        await asyncio.gather(*(self._apply(s, statuses.get(s.id)) for s in sessions))

    async def _apply(self, session: Session, status: TargetStatus | None) -> None:
        if status is None:
            return
        # StaleSession: another writer moved it first; the next tick sees its result.
        with contextlib.suppress(StaleSession):
            await self._apply_status(session, status)

    async def _apply_status(self, s: Session, st: TargetStatus) -> None:
        if st.handle_update:
            s.handle = {**(s.handle or {}), **st.handle_update}
        if st.phase == Phase.UNREACHABLE:
            if not s.unreachable:
                s.unreachable = True
                self._write(s, "unreachable", st.reason)
            return
        if s.unreachable:
            s.unreachable = False
            self._write(s, "reachable", "target answers again")
        if st.endpoints is not None and st.endpoints != s.endpoints:
            s.endpoints = st.endpoints
            self._write(s)
        self._note_time_left(s, st)
        if st.phase == Phase.PENDING:
            if s.state == State.PENDING and st.reason and st.reason != s.reason:
                self._set(s, State.PENDING, st.reason, event="queued")
            return
        if st.phase in (Phase.EXITED, Phase.STOPPED, Phase.TIMEOUT):
            await self._ended(s, st)
            return
        if st.phase == Phase.STOPPING:
            if s.state != State.STOPPING:
                self._set(s, State.STOPPING, st.reason or "stopping", event="stopping")
            return
        # RUNNING: the health check decides between starting and ready.
        await self._check_running(s)

    async def _ended(self, s: Session, st: TargetStatus) -> None:
        s.exit_code = st.exit_code
        if st.log_tail:
            s.log_tail = redact(st.log_tail, [self.api_key(s)])
        if st.phase == Phase.TIMEOUT:
            self._set(s, State.TIMEOUT, st.reason or "time limit reached", event="timeout")
        elif s.stop_requested:
            self._set(s, State.STOPPED, s.reason, event="stopped")
        elif st.phase == Phase.STOPPED:
            self._set(s, State.STOPPED, st.reason or "stopped outside hpcserve", event="stopped")
        else:
            self._set(s, State.FAILED, st.reason or "the engine ended", event="failed")

    async def _check_running(self, s: Session) -> None:
        now = time.time()
        if s.state in (State.PENDING, State.STARTING):
            # Only here does the probe decide anything: probing ready sessions every tick cost
            # 200 new SSH channels and ~1.3 s per tick with 200 SLURM sessions (p3_slurm_tick).
            if await self._healthy(s):
                self._set(s, State.READY, "serving", event="ready")
            elif s.state == State.PENDING:
                self._set(s, State.STARTING, "engine starting", event="starting")
            elif now - s.created_at > self.start_timeout:
                await self._give_up(s, f"the engine did not answer its health check within "
                                    f"{self.start_timeout:.0f} s")
            return
        if s.state == State.READY:
            await self._autostop(s, now)
            if s.state == State.READY:
                self.ready_health.consider(s.id, s.endpoints, s.spec.get("health_path",
                                           "/health"), self.api_key(s), s.degraded_endpoints)

    async def _probe(self, url: str, path: str, key: str) -> bool:
        """One health probe of a ready endpoint; a hung engine answers nothing within the
        timeout (a third of the probe interval, at most 5 s)."""
        timeout = min(5.0, self.ready_health.interval / 3)
        return await health.answers(self._client(), url, path, key, timeout=timeout)

    def _degraded(self, session_id: str, endpoints: list[str], reason: str) -> None:
        """The degraded endpoints of a ready session changed (readiness.py's verdict)."""
        s = self.store.get(session_id)
        if s is None or s.state != State.READY:
            return
        s.degraded, s.degraded_reason, s.degraded_endpoints = bool(endpoints), reason, endpoints
        with contextlib.suppress(StaleSession):
            self._write(s, "degraded" if endpoints else "healthy",
                        reason or "its health checks pass again")

    async def _healthy(self, s: Session) -> bool:
        """Every replica answers its health check (one probe each, in turn)."""
        if not s.endpoints:
            return False
        path, key = s.spec.get("health_path", "/health"), self.api_key(s)
        for url in s.endpoints:
            if not await health.answers(self._client(), url, path, key):
                return False
        return True

    async def _autostop(self, s: Session, now: float) -> None:
        if s.max_lifetime_s and now - s.created_at >= s.max_lifetime_s:
            await self._autostop_now(s, f"max lifetime of {s.max_lifetime_s} s reached (autostop)")
        elif s.idle_timeout_s and now - s.last_activity >= s.idle_timeout_s:
            await self._autostop_now(s, f"idle for {s.idle_timeout_s} s (autostop)")

    async def _autostop_now(self, s: Session, reason: str) -> None:
        try:
            await self.stop(s.id, reason)
        except HpcserveError as exc:
            log.warning("autostop of %s failed: %s", s.id, exc.message)

    async def _give_up(self, s: Session, reason: str) -> None:
        tgt = self.target(s.target)
        tail = ""
        if s.handle:
            # Logs first: a target may delete its resources (and their logs) on stop.
            with contextlib.suppress(HpcserveError):
                text, _ = await tgt.read_logs(s.handle, 0)
                tail = "\n".join(text.splitlines()[-40:])
            with contextlib.suppress(HpcserveError):
                await tgt.stop(s.handle)
        s = self.store.get(s.id) or s
        s.log_tail = redact(tail, [self.api_key(s)])
        self._set(s, State.FAILED, reason, event="failed")

    # ------------------------------------------------------------------ writes and events

    def _set(self, s: Session, state: State, reason: str, *, event: str) -> None:
        reason = redact(reason, [self.api_key(s)])  # engines may echo their arguments
        changed = s.transition(state, reason)
        if changed and state != State.READY and s.degraded:  # only a ready session is
            s.degraded, s.degraded_reason, s.degraded_endpoints = False, "", []
        if changed and state == State.READY:
            s.last_activity = max(s.last_activity, time.time())  # idle counts from ready
        self._write(s, event, reason)
        if changed:
            self._publish(s, event)

    def _write(self, s: Session, event: str | None = None, message: str = "") -> None:
        self.store.update(s, event, message)
        if event in ("unreachable", "reachable"):
            self._publish(s, event)


def _jsonable(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides as the store keeps them (JSON): values it cannot hold become strings."""
    import json

    out = {}
    for k, v in overrides.items():
        try:
            json.dumps(v)
            out[str(k)] = v
        except (TypeError, ValueError):
            out[str(k)] = str(v)
    return out


def _whoami() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
