"""The embedded facade, and `default()`: the facade every front end uses (CLI, magics, widgets,
scripts).

`Hpcserve` runs the session service (service.py) in this process, on a private event loop
thread, so blocking calls from a notebook or a script work and the monitor keeps ticking
meanwhile. Inside a kernel of a Jupyter server running the extension, `default()` returns the
remote facade instead (remote.py): the same `Facade` protocol (facade.py), answered by the
server's REST API over the server's one service.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import HpcserveError
from .events import Subscription, cancel_task, deliver, subscriptions_of
from .prompting import Prompting, require_ready

if TYPE_CHECKING:  # imported when first used: `import hpcserve_jupyter.api` stays fast (P5)
    from .client import Client
    from .facade import Facade, SecretField
    from .gatewaykeys import GatewayKey
    from .jobhandle import JobHandle
    from .jobs import Job
    from .manager import SessionManager
    from .service import SessionService
    from .sessions import Session

T = TypeVar("T")


class _LoopThread:
    """An asyncio loop in a daemon thread; `run` blocks the caller until a coroutine finishes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hpcserve-loop",
                                       daemon=True)
        self.stopped = False
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self.stopped or not self.thread.is_alive():  # closed, or a forked child's copy
            coro.close()
            raise HpcserveError("this hpcserve facade is closed",
                                hint="create a new one (or use hpcserve_jupyter.api.default())")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def iterate(self, agen: Any) -> Iterator[Any]:
        """Drive an async generator on the loop, yielding its items to a sync caller."""
        while True:
            try:
                yield self.run(agen.__anext__())
            except StopAsyncIteration:
                return

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
        if not self.thread.is_alive() and not self.loop.is_closed():
            # Closed here, not by the garbage collector at exit: by then its self-pipe may be
            # gone already ("Exception ignored in BaseEventLoop.__del__ ... Invalid file
            # descriptor: -1" after a CLI command).
            self.loop.close()


class Hpcserve(Prompting):
    """The session service embedded in this process, driven by blocking calls."""

    def __init__(self, *, monitor: bool = True, **manager_kwargs: Any) -> None:
        from .manager import SessionManager
        from .service import SessionService

        self._loop = _LoopThread()
        self._rr = itertools.count()

        async def make() -> SessionService:
            service = SessionService(SessionManager(**manager_kwargs))
            await service.start(monitor=monitor)
            return service

        try:
            self.service = self._loop.run(make())
        except BaseException:
            self._loop.stop()
            raise
        _close_at_exit(self)

    @property
    def manager(self) -> SessionManager:
        """The manager under the service (tests and benchmarks look at its store)."""
        return self.service.manager

    def close(self) -> None:
        """Stop the monitor, release connections and end the loop thread (sessions go on).

        Idempotent. Run before the interpreter's exit stops the worker threads the targets
        poll with: the CLI calls it before returning, and exit runs it for any facade still
        open (see _close_at_exit)."""
        if self._loop.stopped:
            return
        _open_facades.discard(self)
        for sub in list(subscriptions_of(self)):
            sub.close()
        try:
            self._loop.run(self.service.close(), timeout=30)
        finally:
            self._loop.stop()

    # ------------------------------------------------------------------ catalog

    def recipes(self) -> list[dict[str, Any]]:
        return self.service.recipes()

    def recipe(self, name: str) -> dict[str, Any]:
        return self.service.recipe(name)

    def recipe_errors(self) -> dict[str, str]:
        return self.service.recipe_errors()

    def targets(self) -> list[dict[str, Any]]:
        return self.service.targets()

    def target_secrets(self, target: str) -> list[SecretField]:
        """The secrets a target reads from environment variables, as front ends ask for them:
        `[{"label", "env", "is_set"}]` (variable NAMES only; values never leave the process)."""
        return self.service.target_secrets(target)

    def set_target_secrets(self, target: str, values: dict[str, str]) -> None:
        """Put secrets where `target` reads them: this process's environment (the embedded
        manager runs here), under variable names that target_secrets(target) lists."""
        self.service.set_target_secrets(target, values)

    # ------------------------------------------------------------------ lifecycle

    def launch(self, recipe: str, *, backend: str | None = None, on: str = "local",
               name: str | None = None, wait: bool = True, timeout: float | None = None,
               progress: Callable[[Session], None] | None = None, **overrides: Any) -> Session:
        """Launch `recipe` on target `on`; with wait=True return once it is ready (or ended)."""
        session = self._loop.run(self.service.launch(recipe, backend=backend, target=on,
                                                     name=name, overrides=overrides))
        if wait:
            session = self.wait(session.id, timeout=timeout, progress=progress)
        return session

    def wait(self, key: str, *, timeout: float | None = None,
             progress: Callable[[Session], None] | None = None) -> Session:
        return self._loop.run(self.service.wait(key, timeout=timeout, progress=progress))

    def sessions(self, *, live_only: bool = False) -> list[Session]:
        return self.service.sessions(live_only=live_only)

    def status(self, key: str) -> Session:
        return self.service.get(key)

    def refresh(self) -> None:
        """One monitor pass now (the loop does this every poll interval anyway)."""
        self._loop.run(self.service.refresh())

    def stop(self, key: str) -> Session:
        return self._loop.run(self.service.stop(key))

    def keepalive(self, key: str) -> Session:
        return self.service.keepalive(key)

    def relaunch(self, key: str, *, name: str | None = None, wait: bool = True,
                 timeout: float | None = None,
                 progress: Callable[[Session], None] | None = None) -> Session:
        """A new session with `key`'s recipe, backend, target and overrides (next name)."""
        session = self._loop.run(self.service.relaunch(key, name=name))
        if wait:
            session = self.wait(session.id, timeout=timeout, progress=progress)
        return session

    def extend(self, key: str, time: str | int) -> tuple[Session, str]:
        """`time` more for a live session where its target allows; (session, what it said)."""
        return self._loop.run(self.service.extend(key, time))

    def metrics(self, key: str) -> dict[str, Any]:
        """Live serving metrics and GPU use of a session (the REST route's JSON)."""
        return self._loop.run(self.service.metrics(key))

    def logs(self, key: str, tail: int | None = 100) -> str:
        return self._loop.run(self.service.logs(key, tail))

    def follow_logs(self, key: str, *, from_start: bool = True) -> Iterator[str]:
        return self._loop.iterate(self.service.follow_logs(key, from_start=from_start))

    def events(self, key: str | None = None) -> list[dict[str, Any]]:
        return self.service.events(key)

    # ------------------------------------------------------------------ one-off jobs

    def submit_job(self, recipe: str, input: str | Path, *, on: str = "local",
                   backend: str | None = None, name: str | None = None,
                   output: str | Path | None = None, concurrency: int = 8,
                   resume: str | None = None, runner: str = "auto",
                   **overrides: Any) -> JobHandle:
        """Submit a batch job over an OpenAI Batch file; returns at once (job.wait() waits)."""
        from .jobhandle import JobHandle

        job = self._loop.run(self.service.submit_job(
            recipe, input, target=on, backend=backend, name=name, output=output,
            concurrency=concurrency, resume=resume, overrides=overrides, runner=runner))
        return JobHandle(self, job)

    def batch_job(self, recipe: str, prompts: Any, *, url: str = "/v1/chat/completions",
                  system: str | None = None, params: dict[str, Any] | None = None,
                  on: str = "local", backend: str | None = None, name: str | None = None,
                  concurrency: int = 8, **overrides: Any) -> JobHandle:
        """A batch job from prompts (a list, or a pandas Series: its index labels become the
        custom_ids), written as an OpenAI Batch file in the state directory."""
        from . import jobinput  # here, not at import: it pulls in the job driver (P5)

        path = jobinput.write_prompts(self.service.home, prompts, url=url, system=system,
                                      params=params)
        return self.submit_job(recipe, path, on=on, backend=backend, name=name,
                               concurrency=concurrency, **overrides)

    def jobs(self, *, live_only: bool = False) -> list[Job]:
        return self.service.jobs(live_only=live_only)

    def job_status(self, key: str) -> Job:
        return self.service.get_job(key)

    def wait_job(self, key: str, *, timeout: float | None = None,
                 progress: Callable[[Job], None] | None = None) -> Job:
        return self._loop.run(self.service.wait_job(key, timeout=timeout, progress=progress))

    def cancel_job(self, key: str) -> Job:
        return self._loop.run(self.service.cancel_job(key))

    def job_logs(self, key: str, tail: int | None = 100) -> str:
        return self._loop.run(self.service.job_logs(key, tail))

    def job_results(self, key: str, *, output: str | Path | None = None) -> Path:
        path = self._loop.run(self.service.job_results(key))
        if not output:
            return path
        from . import jobinput

        return jobinput.copy_out(path, output)

    # ------------------------------------------------------------------ gateway keys

    def create_gateway_key(self, label: str | None = None, *,
                           sessions: list[str] | None = None) -> GatewayKey:
        """A key the gateway (/hpcserve/v1) accepts for `sessions` (names or ids; None: every
        session) and no other route does; `.key` holds it, shown this once."""
        return self.service.create_gateway_key(label, sessions)

    def gateway_keys(self) -> list[GatewayKey]:
        return self.service.gateway_keys()

    def revoke_gateway_key(self, key: str) -> GatewayKey:
        """Revoke a gateway key by id or label."""
        return self.service.revoke_gateway_key(key)

    # ------------------------------------------------------------------ Jupyter AI

    def use_in_jupyter_ai(self, key: str, *, default: bool = False) -> dict[str, Any]:
        """Refused here: Jupyter AI reaches sessions through a Jupyter server's gateway, and
        this embedded service runs without one (the remote facade does it)."""
        from .jupyter.aiconfig import config_path

        return self.service.use_in_jupyter_ai(key, api_base=None, path=config_path(),
                                              default=default)

    def drop_from_jupyter_ai(self, key: str) -> dict[str, Any]:
        """Remove the session's Jupyter AI entry and revoke the gateway key it held."""
        from .jupyter.aiconfig import config_path

        return self.service.drop_from_jupyter_ai(key, path=config_path())

    # ------------------------------------------------------------------ prompting

    def client(self, key: str) -> tuple[Client, Session]:
        """An OpenAI-compatible client for a ready session (round robin over its replicas)."""
        from .client import Client

        session = self.service.get(key)
        require_ready(session)
        url = session.endpoints[next(self._rr) % len(session.endpoints)]
        self.service.touch(session.id)
        return Client(url, api_key=self.service.api_key(session)), session

    def _answered(self, session: Session) -> None:
        self.service.touch(session.id)

    def watch(self, *, snapshot: bool = True) -> Subscription:
        """Service events as they happen, for a front end: iterate the subscription (or .get()).

        The first event is a `snapshot` of the live sessions (unless snapshot=False), then one
        `{"type": KIND, "session": {...public...}, "ts": ...}` per change, as the REST API's
        /events stream sends them. No polling: the manager pushes each event into the queue.
        """
        sub = Subscription()
        service = self.service

        async def start() -> asyncio.Task[None]:
            queue = service.subscribe()  # subscribe, then snapshot, with no await between
            if snapshot:
                sub.put(service.snapshot())

            async def pump() -> None:
                try:
                    while True:
                        sub.put(await queue.get())
                finally:
                    service.unsubscribe(queue)

            return asyncio.ensure_future(pump())

        task = self._loop.run(start())
        loop_thread = self._loop

        def release() -> None:  # returns once the manager has dropped the queue
            loop = loop_thread.loop
            if not loop.is_running():
                return
            done = asyncio.run_coroutine_threadsafe(cancel_task(task), loop)
            if threading.current_thread() is not loop_thread.thread:
                with contextlib.suppress(Exception):
                    done.result(timeout=5)

        sub.on_close(release)
        subscriptions_of(self).add(sub)
        return sub

    def subscribe(self, callback: Callable[[dict[str, Any]], None], *,
                  snapshot: bool = True) -> Subscription:
        """Call `callback(event)` for every event (see watch) on a dispatcher thread, so the
        callback may call this facade; `.close()` on the result unsubscribes."""
        return deliver(self.watch(snapshot=snapshot), callback)


_default: Hpcserve | None = None
_default_lock = threading.Lock()
# Embedded facades not closed yet; the exit hook closes them (and the default facade).
_open_facades: set[Hpcserve] = set()
_exit_hook_registered = False


def default() -> Facade:
    """The process-wide facade, created on first use and closed at exit.

    Inside a kernel of a Jupyter server that runs the hpcserve extension (or with
    HPCSERVE_SERVER_URL set) it is the remote facade, so every notebook shares the server's one
    session manager; elsewhere (plain IPython, scripts, the CLI, nbval) the manager is embedded.
    HPCSERVE_EMBEDDED=1 forces the embedded manager.
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = _remote_or_none() or Hpcserve()
            _register_exit_hook()
        return _default


def default_exists() -> bool:
    """Whether default() has made its facade (and close_default() not closed it yet)."""
    return _default is not None


def close_default() -> None:
    """Close the process-wide facade now; the next default() makes a new one."""
    global _default
    with _default_lock:
        facade, _default = _default, None
    if facade is not None:
        with contextlib.suppress(Exception):
            facade.close()


def _close_at_exit(facade: Hpcserve) -> None:
    """Have `facade` closed when the interpreter exits, if nobody closed it before."""
    _open_facades.add(facade)
    _register_exit_hook()


def _register_exit_hook() -> None:
    """Close every open facade at exit BEFORE concurrent.futures stops its worker threads.

    At exit Python first runs threading's own exit hooks, among them concurrent.futures'
    (which refuses new work from then on: "cannot schedule new futures after ... shutdown"),
    and only then the `atexit` handlers. A facade closed by `atexit` kept its monitor ticking
    on the loop thread in between, and the targets' polls (asyncio.to_thread) failed with a
    traceback as the CLI exited. Threading's hooks run last-registered first, so importing
    concurrent.futures.thread (registering its hook) before registering ours closes the
    facades first. `atexit` is the fallback where that hook does not exist.
    """
    global _exit_hook_registered
    if _exit_hook_registered:
        return
    _exit_hook_registered = True
    import concurrent.futures.thread  # noqa: F401  (its exit hook must be registered first)

    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("no threading exit hooks")
        register(_close_all)
    except RuntimeError:  # another Python, or the interpreter is exiting already
        atexit.register(_close_all)


def _close_all() -> None:
    close_default()
    for facade in list(_open_facades):
        with contextlib.suppress(Exception):
            facade.close()


def _remote_or_none() -> Facade | None:
    import os

    if os.environ.get("HPCSERVE_EMBEDDED") == "1":
        return None
    if not (os.environ.get("HPCSERVE_SERVER_URL") or os.environ.get("JPY_PARENT_PID")
            or os.environ.get("JPY_SESSION_NAME")):
        return None  # not in a kernel started by a Jupyter server: no need to look
    from .remote import RemoteHpcserve, find_server

    server = find_server()
    return RemoteHpcserve(server.url, server.token) if server else None


def launch(recipe: str, **kwargs: Any) -> Session:
    return default().launch(recipe, **kwargs)


def sessions(*, live_only: bool = False) -> list[Session]:
    return default().sessions(live_only=live_only)


def status(key: str) -> Session:
    return default().status(key)


def stop(key: str) -> Session:
    return default().stop(key)


def keepalive(key: str) -> Session:
    return default().keepalive(key)


def relaunch(key: str, *, name: str | None = None, wait: bool = True,
             timeout: float | None = None) -> Session:
    return default().relaunch(key, name=name, wait=wait, timeout=timeout)


def extend(key: str, time: str | int) -> tuple[Session, str]:
    return default().extend(key, time)


def metrics(key: str) -> dict[str, Any]:
    return default().metrics(key)


def logs(key: str, tail: int | None = 100) -> str:
    return default().logs(key, tail)


def prompt(key: str, text: str | list[dict[str, Any]], **params: Any) -> str:
    return default().prompt(key, text, **params)


def stream(key: str, text: str | list[dict[str, Any]], **params: Any) -> Iterator[str]:
    return default().stream(key, text, **params)


def chat(key: str, messages: list[dict[str, Any]], **params: Any) -> str:
    return default().prompt(key, messages, **params)


def models(key: str) -> list[str]:
    return default().models(key)


def recipes() -> list[dict[str, Any]]:
    return default().recipes()


def targets() -> list[dict[str, Any]]:
    return default().targets()


def batch(key: str, prompts: Any, **kwargs: Any) -> Any:
    return default().batch(key, prompts, **kwargs)


def bench(key: str, **kwargs: Any) -> Any:
    return default().bench(key, **kwargs)


def watch(*, snapshot: bool = True) -> Subscription:
    return default().watch(snapshot=snapshot)


def subscribe(callback: Callable[[dict[str, Any]], None], *, snapshot: bool = True
              ) -> Subscription:
    return default().subscribe(callback, snapshot=snapshot)
