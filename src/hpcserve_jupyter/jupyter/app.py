"""The Jupyter server extension: the session service (service.py, the same one the embedded
facade runs) on the server's event loop, its REST API, the proxy to sessions and the
OpenAI-compatible gateway.

Enabled on install (jupyter-config/jupyter_server_config.d/hpcserve_jupyter.json). Configure it
as `c.HpcserveApp.<trait>` in jupyter_server_config.py or `--HpcserveApp.<trait>=...`.
Sessions outlive the server: at start the manager re-attaches to live sessions; at shutdown it
only stops monitoring (`manager.close()`), the engines keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Float, Int, List, TraitError, Unicode, validate

from .. import health
from .aiconfig import config_path
from .replicas import ReplicaGroup

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx

    from ..manager import SessionManager
    from ..service import SessionService
    from ..sessions import Session
    from .h11client import Pool
    from .lookup import SessionLookup


def _duration_or_off(value: str) -> str:
    from ..durations import parse_duration

    if value.strip().lower() in ("", "0", "off", "none"):
        return value.strip()
    try:
        parse_duration(value)
    except ValueError as exc:
        raise TraitError(str(exc)) from None
    return value.strip()


class HpcserveApp(ExtensionApp):
    """hpcserve: launch, watch, prompt and stop AI serving sessions from Jupyter."""

    name = "hpcserve_jupyter"
    load_other_extensions = True

    # ------------------------------------------------------------------ configuration

    state_dir = Unicode(
        "", config=True,
        help="""Directory of hpcserve's state (sessions database, secret key, engine logs).
        Empty: $HPCSERVE_HOME, else `hpcserve/` in the Jupyter data directory. Share it with the
        CLI and notebooks so they all see the same sessions.""")
    targets_file = Unicode(
        "", config=True,
        help="""YAML file defining the targets (where sessions run). Empty: $HPCSERVE_TARGETS,
        else ~/.config/hpcserve/targets.yaml. `local` always exists.""")
    recipe_dirs = List(
        Unicode(), config=True,
        help="""Extra recipe directories, searched after the built-in recipes,
        ~/.config/hpcserve/recipes and $HPCSERVE_RECIPES (later directories win).""")
    poll_interval = Float(
        2.0, config=True,
        help="""Seconds between two monitor passes (one batched poll per target). Starting
        engines are probed for readiness more often than this.""")
    start_timeout = Float(
        1800.0, config=True,
        help="Seconds an engine may take to answer its health check before it is failed.")
    default_idle_timeout = Unicode(
        "", config=True,
        help="""Idle timeout (autostop) for launches whose recipe and request set none, e.g.
        '30m' or '2h'; '0' turns autostop off. Empty: hpcserve's default (1 h).""")
    default_max_lifetime = Unicode(
        "", config=True,
        help="""Maximum lifetime for launches whose recipe and request set none, e.g. '8h';
        '0' for none. Empty: the recipe's time limit.""")
    proxy_connect_timeout = Float(
        10.0, config=True,
        help="Seconds to connect to a session's endpoint through the proxy and the gateway.")
    proxy_read_timeout = Float(
        600.0, config=True,
        help="""Seconds the proxy and the gateway wait for the next bytes of an answer (a long
        generation streams; a non-streamed one must finish within this).""")
    proxy_write_timeout = Float(
        60.0, config=True,
        help="Seconds to send a request body chunk to a session's endpoint.")
    max_inflight_per_replica = Int(
        16, config=True,
        help="""Admission control: requests in flight per replica at most (gateway, and POST
        requests through the proxy); more wait in a FIFO queue. 0: no limit.""")
    max_queue = Int(
        256, config=True,
        help="""Admission control: requests waiting per session at most; beyond, the answer is
        429 with Retry-After.""")
    queue_timeout = Float(
        300.0, config=True,
        help="Seconds a request waits in a session's queue before it is answered 429.")
    replica_max_failures = Int(
        3, config=True,
        help="""Consecutive connection failures after which a replica is taken out of the
        rotation until its health check passes.""")
    replica_recheck_interval = Float(
        5.0, config=True,
        help="Seconds between health checks of a replica taken out of the rotation.")
    expiry_warning = Float(
        600.0, config=True,
        help="""Seconds of time left at which a session's `expiring` event is sent (once), and
        the idle autostop warning at the latest.""")
    health_interval = Float(
        15.0, config=True,
        help="""Seconds between health probes of a ready session (in the background); an
        engine that fails `health_failures` in a row is marked degraded and routed around.""")
    health_failures = Int(
        2, config=True, help="Failed probes in a row that make a ready session degraded.")
    max_lifetime_bound = Unicode(
        "7d", config=True,
        help="""The longest `extend` may make a session's max lifetime (from its launch),
        e.g. '24h' or '7d'.""")
    events_keepalive_interval = Float(
        15.0, config=True,
        help="Seconds between keepalive comments on the Server-Sent Events stream.")
    allowed_images = List(
        Unicode(), config=True,
        help="""Container images one-off jobs may run (shell-style patterns such as
        docker://ghcr.io/our-lab/*), on every target; empty: no server-wide list (a target's
        own `allowed_images` in targets.yaml still applies).""")
    job_max_input_mb = Int(
        2048, config=True, help="Largest job input file (or unpacked input archive), in MB.")
    job_max_input_lines = Int(
        5_000_000, config=True, help="Most request lines a batch job's input may have.")
    job_max_input_files = Int(
        100_000, config=True, help="Most files a task job's input archive may hold.")
    job_max_concurrency = Int(
        256, config=True, help="Most requests a batch job may keep in flight.")

    @validate("default_idle_timeout", "default_max_lifetime")
    def _valid_duration(self, proposal: dict[str, Any]) -> str:
        return _duration_or_off(proposal["value"])

    @validate("max_lifetime_bound")
    def _valid_bound(self, proposal: dict[str, Any]) -> str:
        from ..durations import parse_duration

        try:
            parse_duration(proposal["value"])
        except ValueError as exc:
            raise TraitError(f"HpcserveApp.max_lifetime_bound: {exc}") from None
        return str(proposal["value"])

    # ------------------------------------------------------------------ wiring

    service: SessionService
    manager: SessionManager
    http: httpx.AsyncClient
    groups: dict[str, ReplicaGroup]

    def initialize_settings(self) -> None:
        from ..jobmanager import JobLimits
        from ..resolve import LaunchDefaults
        from ..service import SessionService

        self.service = SessionService.configured(
            state_dir=Path(self.state_dir).expanduser() if self.state_dir else None,
            extra_recipe_dirs=[Path(d).expanduser() for d in self.recipe_dirs],
            targets_file=Path(self.targets_file).expanduser() if self.targets_file else None,
            defaults=LaunchDefaults(idle_timeout=self.default_idle_timeout or None,
                                    max_lifetime=self.default_max_lifetime or None,
                                    lifetime_bound=self.max_lifetime_bound),
            expiry_warning=self.expiry_warning, health_interval=self.health_interval,
            health_failures=self.health_failures,
            # shown on every target use, not a dead server
            on_config_error=lambda message: self.log.error("hpcserve: %s", message),
            poll_interval=self.poll_interval, start_timeout=self.start_timeout,
            job_limits=JobLimits(
                max_input_bytes=self.job_max_input_mb << 20,
                max_input_lines=self.job_max_input_lines,
                max_input_files=self.job_max_input_files,
                max_concurrency=self.job_max_concurrency,
                allowed_images=tuple(self.allowed_images)))
        self.manager = self.service.manager
        self.groups = {}
        self._http: httpx.AsyncClient | None = None
        self._pool: Pool | None = None
        self._lookup: SessionLookup | None = None
        self._started: asyncio.Future[None] | None = None
        self._streams: set[Any] = set()
        self._touched: dict[str, float] = {}
        self.settings["hpcserve_manager"] = self.manager
        self.log.info("hpcserve: state in %s", self.service.home)

    def initialize_handlers(self) -> None:
        from .routes import ROUTES

        self.handlers.extend((r.pattern, r.handler, r.kwargs) for r in ROUTES)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        await self.ensure_started()

    async def ensure_started(self) -> SessionManager:
        """Start the manager once (re-attach to live sessions, monitor loop); handlers await it
        too, so a request that comes before the server's start hook still finds it running."""
        if self._started is None or (self._started.done() and self._started.exception()):
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)
        return self.manager

    async def _start(self) -> None:
        await self.service.start()
        live = self.service.sessions(live_only=True)
        self.log.info("hpcserve: monitoring %d live session(s)", len(live))
        self._forget_ended_ai()
        self._ai_follower = asyncio.ensure_future(self._follow_ends())

    async def _follow_ends(self) -> None:
        """When a session ends (here or in another process sharing the state), its Jupyter AI
        entry goes and its gateway key is revoked: checked every few seconds, a file read and
        two queries (not an event subscriber: those are for clients, which may come and go)."""
        while True:
            await asyncio.sleep(max(2.0, self.poll_interval))
            self._forget_ended_ai()

    def _forget_ended_ai(self) -> None:
        try:
            if gone := self.service.forget_ended_in_jupyter_ai(config_path()):
                self.log.info("hpcserve: removed %d ended session(s) from Jupyter AI",
                              len(gone))
        except Exception as exc:  # a broken settings file must not stop the follower
            self.log.warning("hpcserve: could not update Jupyter AI's settings: %s", exc)

    async def stop_extension(self) -> None:
        """Leave every session running: stop monitoring and release connections only."""
        for stream in list(self._streams):
            with contextlib.suppress(Exception):
                stream.set()
        for group in self.groups.values():
            await group.close()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._lookup is not None:
            self._lookup.close()
            self._lookup = None
        if self._started is not None and not self._started.done():
            self._started.cancel()
        if getattr(self, "_ai_follower", None) is not None:
            self._ai_follower.cancel()
        await self.service.close()

    # ------------------------------------------------------------------ shared by handlers

    def client(self) -> httpx.AsyncClient:
        """One connection pool for the proxy, the gateway and health checks (no env proxies)."""
        import httpx

        if self._http is None:
            timeout = httpx.Timeout(connect=self.proxy_connect_timeout,
                                    read=self.proxy_read_timeout,
                                    write=self.proxy_write_timeout,
                                    pool=self.proxy_connect_timeout)
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
            self._http = httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False,
                                           follow_redirects=False)
            self._http.headers = httpx.Headers()  # forward the client's headers, add none
        return self._http

    def upstream_pool(self) -> Pool:
        """The proxy's and the gateway's keep-alive connections to engines (h11client.py):
        their hot path; health checks and cold paths use client()."""
        if self._pool is None or self._pool.closed:
            from .h11client import Pool, Timeouts

            self._pool = Pool(Timeouts(connect=self.proxy_connect_timeout,
                                       read=self.proxy_read_timeout,
                                       write=self.proxy_write_timeout))
        return self._pool

    def lookup(self) -> SessionLookup:
        """Session lookups for the proxy and the gateway, cached until the store changes."""
        if self._lookup is None:
            from .lookup import SessionLookup

            self._lookup = SessionLookup(self.manager)
        return self._lookup

    def group(self, session: Session) -> ReplicaGroup:
        """The replica group of a session, following its current endpoints."""
        if len(self.groups) > 64:  # drop the groups of ended sessions now and then
            live = {s.id for s in self.service.sessions(live_only=True)}
            for sid in [k for k in self.groups if k not in live]:
                self.groups.pop(sid)
        group = self.groups.get(session.id)
        if group is None:
            group = ReplicaGroup(
                [], health=self._health_check(session),
                max_inflight=self.max_inflight_per_replica, max_queue=self.max_queue,
                queue_timeout=self.queue_timeout, max_failures=self.replica_max_failures,
                recheck_interval=self.replica_recheck_interval)
            self.groups[session.id] = group
        group.update(list(session.endpoints), session.degraded_endpoints)
        return group

    def touch(self, session_id: str) -> None:
        """Record activity for a session's idle timer: one SQLite write per session per second
        at most (idle timeouts are minutes; proxied traffic can be thousands of requests)."""
        now = time.monotonic()
        if now - self._touched.get(session_id, -1e9) < 1.0:
            return
        self._touched[session_id] = now
        try:
            self.service.touch(session_id)
        except Exception as exc:  # activity must never fail a request
            self.log.warning("hpcserve: recording activity of %s failed: %s", session_id, exc)

    def forget(self, session_id: str) -> None:
        self.groups.pop(session_id, None)

    def _health_check(self, session: Session) -> Callable[[str], Awaitable[bool]]:
        path = session.spec.get("health_path", "/health")
        key = self.service.api_key(session)
        timeout = min(5.0, self.proxy_read_timeout)

        async def healthy(url: str) -> bool:
            return await health.answers(self.client(), url, path, key, timeout=timeout)

        return healthy
