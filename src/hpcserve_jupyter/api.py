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
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from .errors import NotReady
from .sessions import Session, State

T = TypeVar("T")


class _LoopThread:
    """An asyncio loop in a daemon thread; `run` blocks the caller until a coroutine finishes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="hpcserve-loop",
                                       daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def iterate(self, agen: Any) -> Iterator[Any]:
        """Drive an async generator on the loop, yielding its items to a sync caller."""
        while True:
            try:
                yield self.run(agen.__anext__())
            except StopAsyncIteration:
                return

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class Hpcserve:
    """One embedded manager and the calls front ends make on it."""

    def __init__(self, *, monitor: bool = True, **manager_kwargs: Any) -> None:
        from .manager import SessionManager

        self._loop = _LoopThread()
        self._rr = itertools.count()

        async def make() -> SessionManager:
            mgr = SessionManager(**manager_kwargs)
            await mgr.start(monitor=monitor)
            return mgr

        self.manager = self._loop.run(make())

    def close(self) -> None:
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
        if session.state != State.READY or not session.endpoints:
            hint = "wait for it: hpcserve status, or launch with --wait"
            if session.state.terminal:
                hint = "launch it again: it has ended"
            raise NotReady(f"session {session.name} is {session.state}, not ready", hint=hint)
        url = session.endpoints[next(self._rr) % len(session.endpoints)]
        self.manager.touch(session.id)
        return Client(url, api_key=self.manager.api_key(session)), session

    def models(self, key: str) -> list[str]:
        client, _ = self.client(key)
        with client:
            return client.models()

    def prompt(self, key: str, text: str | list[dict[str, Any]], *, system: str | None = None,
               **params: Any) -> str:
        """The whole chat answer to `text` (a string or a list of chat messages)."""
        client, session = self.client(key)
        with client:
            return client.chat(session.model, text, system=system, **params)

    def stream(self, key: str, text: str | list[dict[str, Any]], *, system: str | None = None,
               **params: Any) -> Iterator[str]:
        """Text deltas of the chat answer as they arrive."""
        client, session = self.client(key)
        with client:
            yield from client.stream_chat(session.model, text, system=system, **params)
        self.manager.touch(session.id)

    def complete(self, key: str, prompt: str, **params: Any) -> str:
        client, session = self.client(key)
        with client:
            return client.complete(session.model, prompt, **params)

    def embed(self, key: str, texts: str | list[str]) -> list[list[float]]:
        client, session = self.client(key)
        with client:
            return client.embeddings(session.model, texts)


_default: Hpcserve | None = None
_default_lock = threading.Lock()


def default() -> Hpcserve:
    """The process-wide facade, created on first use and closed at exit."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Hpcserve()
            atexit.register(_close_default)
        return _default


def _close_default() -> None:
    global _default
    if _default is not None:
        with contextlib.suppress(Exception):
            _default.close()
        _default = None


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
