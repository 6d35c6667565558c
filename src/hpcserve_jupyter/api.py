"""The facade every front end uses (CLI, magics, widgets, scripts).

Here the session manager runs embedded, in this process, on a private event loop thread, so
blocking calls from a notebook or a script work and the monitor keeps ticking meanwhile.
(The Jupyter server extension mode, behind the same API, comes with the server extension.)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import queue as _queue
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from .errors import HpcserveError
from .prompting import Prompting, require_ready
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


class Hpcserve(Prompting):
    """One embedded manager and the calls front ends make on it."""

    def __init__(self, *, monitor: bool = True, **manager_kwargs: Any) -> None:
        from .manager import SessionManager

        self._loop = _LoopThread()
        self._rr = itertools.count()

        async def make() -> SessionManager:
            mgr = SessionManager(**manager_kwargs)
            await mgr.start(monitor=monitor)
            return mgr

        try:
            self.manager = self._loop.run(make())
        except BaseException:
            self._loop.stop()
            raise
        _close_at_exit(self)

    def close(self) -> None:
        """Stop the monitor, release connections and end the loop thread (sessions go on).

        Idempotent. Run before the interpreter's exit stops the worker threads the targets
        poll with: the CLI calls it before returning, and exit runs it for any facade still
        open (see _close_at_exit)."""
        if self._loop.stopped:
            return
        _open_facades.discard(self)
        for sub in list(_subscriptions(self)):
            sub.close()
        try:
            self._loop.run(self.manager.close(), timeout=30)
        finally:
            self._loop.stop()

    # ------------------------------------------------------------------ catalog

    def recipes(self) -> list[dict[str, Any]]:
        return [r.summary() for _, r in sorted(self.manager.catalog.recipes.items())]

    def recipe(self, name: str) -> dict[str, Any]:
        return self.manager.catalog.get(name).model_dump()

    def recipe_errors(self) -> dict[str, str]:
        return {str(p): str(e) for p, e in self.manager.catalog.errors.items()}

    def targets(self) -> list[dict[str, Any]]:
        return [self.manager.target(n).describe() for n in sorted(self.manager.target_configs)]

    # ------------------------------------------------------------------ lifecycle

    def launch(self, recipe: str, *, backend: str | None = None, on: str = "local",
               name: str | None = None, wait: bool = True, timeout: float | None = None,
               progress: Callable[[Session], None] | None = None, **overrides: Any) -> Session:
        """Launch `recipe` on target `on`; with wait=True return once it is ready (or ended)."""
        session = self._loop.run(self.manager.launch(recipe, backend=backend, target=on,
                                                     name=name, overrides=overrides))
        if wait:
            session = self.wait(session.id, timeout=timeout, progress=progress)
        return session

    def wait(self, key: str, *, timeout: float | None = None,
             progress: Callable[[Session], None] | None = None) -> Session:
        return self._loop.run(self.manager.wait(key, timeout=timeout, progress=progress))

    def sessions(self, *, live_only: bool = False) -> list[Session]:
        return self.manager.sessions(live_only=live_only)

    def status(self, key: str) -> Session:
        return self.manager.get(key)

    def refresh(self) -> None:
        """One monitor pass now (the loop does this every poll interval anyway)."""
        self._loop.run(self.manager.tick())

    def stop(self, key: str) -> Session:
        return self._loop.run(self.manager.stop(key))

    def keepalive(self, key: str) -> Session:
        return self.manager.keepalive(key)

    def logs(self, key: str, tail: int | None = 100) -> str:
        return self._loop.run(self.manager.logs(key, tail))

    def follow_logs(self, key: str, *, from_start: bool = True) -> Iterator[str]:
        return self._loop.iterate(self.manager.follow_logs(key, from_start=from_start))

    def events(self, key: str | None = None) -> list[dict[str, Any]]:
        sid = self.manager.get(key).id if key else None
        return self.manager.events(sid)

    # ------------------------------------------------------------------ prompting

    def client(self, key: str) -> tuple[Any, Session]:
        """An OpenAI-compatible client for a ready session (round robin over its replicas)."""
        from .client import Client

        session = self.manager.get(key)
        require_ready(session)
        url = session.endpoints[next(self._rr) % len(session.endpoints)]
        self.manager.touch(session.id)
        return Client(url, api_key=self.manager.api_key(session)), session

    def _answered(self, session: Session) -> None:
        self.manager.touch(session.id)

    def watch(self, *, snapshot: bool = True) -> Subscription:
        """Manager events as they happen, for a front end: iterate the subscription (or .get()).

        The first event is a `snapshot` of the live sessions (unless snapshot=False), then one
        `{"type": KIND, "session": {...public...}, "ts": ...}` per change, as the REST API's
        /events stream sends them. No polling: the manager pushes each event into the queue.
        """
        sub = Subscription()
        manager = self.manager

        async def start() -> asyncio.Task[None]:
            queue = manager.subscribe()  # subscribe, then snapshot, with no await between
            if snapshot:
                sub.put({"type": "snapshot", "ts": time.time(),
                         "sessions": [s.public() for s in manager.sessions(live_only=True)]})

            async def pump() -> None:
                try:
                    while True:
                        sub.put(await queue.get())
                finally:
                    manager.unsubscribe(queue)

            return asyncio.ensure_future(pump())

        task = self._loop.run(start())
        loop_thread = self._loop

        def release() -> None:  # returns once the manager has dropped the queue
            loop = loop_thread.loop
            if not loop.is_running():
                return
            done = asyncio.run_coroutine_threadsafe(_cancel(task), loop)
            if threading.current_thread() is not loop_thread.thread:
                with contextlib.suppress(Exception):
                    done.result(timeout=5)

        sub.on_close(release)
        _subscriptions(self).add(sub)
        return sub

    def subscribe(self, callback: Callable[[dict[str, Any]], None], *,
                  snapshot: bool = True) -> Subscription:
        """Call `callback(event)` for every manager event (see watch) on a dispatcher thread,
        so the callback may call this facade; `.close()` on the result unsubscribes."""
        return deliver(self.watch(snapshot=snapshot), callback)

    def target_secrets(self, target: str) -> list[dict[str, Any]]:
        """The secrets a target reads from environment variables, as front ends ask for them:
        `[{"label", "env", "is_set"}]` (variable NAMES only; values never leave the process)."""
        tgt = self.manager.target(target)
        return secret_fields(tgt.kind, getattr(tgt, "settings", None))

    def set_target_secrets(self, target: str, values: dict[str, str]) -> None:
        """Put secrets where `target` reads them: this process's environment (the embedded
        manager runs here), under variable names that target_secrets(target) lists."""
        apply_secrets(target, self.target_secrets(target), values)


_default: Hpcserve | None = None
_default_lock = threading.Lock()
# Embedded facades not closed yet; the exit hook closes them (and the default facade).
_open_facades: set[Hpcserve] = set()
_exit_hook_registered = False


def default() -> Any:
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


def _remote_or_none() -> Any:
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


# ---------------------------------------------------------------------- event subscriptions

_log = logging.getLogger(__name__)
_CLOSED = object()


class Subscription:
    """Events handed from the facade's side (a loop thread, an HTTP stream) to a consumer thread.

    Iterate it (ends when closed) or call `get(timeout)`; `close()` ends it and releases the
    producer. Shared by the embedded and the remote facade.
    """

    def __init__(self) -> None:
        self._queue: _queue.Queue[Any] = _queue.Queue()
        self._closed = threading.Event()
        self._on_close: list[Callable[[], Any]] = []

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def put(self, event: dict[str, Any]) -> None:
        if not self._closed.is_set():
            self._queue.put(event)

    def on_close(self, fn: Callable[[], Any]) -> None:
        self._on_close.append(fn)

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next event; None after `timeout` seconds or once closed."""
        try:
            item = self._queue.get(timeout=timeout)
        except _queue.Empty:
            return None
        if item is _CLOSED:
            self._queue.put(_CLOSED)  # for any other reader
            return None
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            item = self.get()
            if item is None:
                return
            yield item

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(_CLOSED)
        for fn in self._on_close:
            with contextlib.suppress(Exception):
                fn()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def deliver(sub: Subscription, callback: Callable[[dict[str, Any]], None]) -> Subscription:
    """Call `callback` for each event of `sub` on a daemon thread; a failing callback is logged
    and does not end the subscription."""

    def run() -> None:
        for event in sub:
            try:
                callback(event)
            except Exception:
                _log.exception("hpcserve event callback failed")

    threading.Thread(target=run, name="hpcserve-events", daemon=True).start()
    return sub


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _subscriptions(owner: Any) -> weakref.WeakSet[Subscription]:
    subs = owner.__dict__.get("_subscriptions")
    if subs is None:
        subs = owner.__dict__.setdefault("_subscriptions", weakref.WeakSet())
    return subs


# Settings fields that NAME an environment variable holding a secret, and how to ask for it.
_SECRET_SETTINGS = (
    ("key_passphrase_env", "SSH key passphrase"),
    ("password_env", "Tapis password"),
    ("token_env", "Tapis access token"),
    ("hf_token_env", "Hugging Face token"),
)


def apply_secrets(target: str, fields: list[dict[str, Any]], values: dict[str, str]) -> None:
    """Set secrets in this process's environment, only under the names `fields` allows (so a
    front end cannot set arbitrary variables); empty values are ignored. Values are never
    logged or echoed."""
    import os

    from .errors import BadInput

    allowed = {f["env"] for f in fields}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise BadInput(f"target {target!r} reads no secret from {', '.join(unknown)}",
                       hint="its secrets: " + (", ".join(sorted(allowed)) or "none"))
    os.environ.update({k: str(v) for k, v in values.items() if v})


def secret_fields(kind: str, settings: Any) -> list[dict[str, Any]]:
    """`[{"label", "env", "is_set"}]` for a target's settings object (names only, no values).

    Local engines inherit this process's environment, so `HF_TOKEN` counts for them.
    """
    import os

    fields: list[tuple[str, str]] = []
    for attr, label in _SECRET_SETTINGS:
        env = getattr(settings, attr, None)
        if isinstance(env, str) and env:
            fields.append((label, env))
    if kind == "local":
        fields.append(("Hugging Face token", "HF_TOKEN"))
    return [{"label": label, "env": env, "is_set": bool(os.environ.get(env))}
            for label, env in fields]
