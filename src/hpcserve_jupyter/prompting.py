"""Prompt calls shared by the embedded facade (api.Hpcserve) and the remote one
(remote.RemoteHpcserve): they differ only in how `client()` reaches a session's engine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import NotReady
from .sessions import Session, State

if TYPE_CHECKING:
    from .client import Client


def require_ready(session: Session) -> None:
    """A NotReady saying what to do, unless the session is serving."""
    if session.state == State.READY and session.endpoints:
        return
    hint = "wait for it: hpcserve status, or launch with --wait"
    if session.state.terminal:
        hint = "launch it again: it has ended"
    raise NotReady(f"session {session.name} is {session.state}, not ready", hint=hint)


class Prompting:
    def client(self, key: str) -> tuple[Client, Session]:
        """An OpenAI-compatible client for a ready session, and the session."""
        raise NotImplementedError

    def _answered(self, session: Session) -> None:
        """Called after a streamed answer ends (activity for idle autostop, where needed)."""

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
        self._answered(session)

    def complete(self, key: str, prompt: str, **params: Any) -> str:
        client, session = self.client(key)
        with client:
            return client.complete(session.model, prompt, **params)

    def embed(self, key: str, texts: str | list[str]) -> list[list[float]]:
        client, session = self.client(key)
        with client:
            return client.embeddings(session.model, texts)

    def batch(self, key: str, prompts: Any, *, concurrency: int = 8, progress: bool = True,
              system: str | None = None, **params: Any) -> Any:
        """Answer many prompts (a list, or a pandas Series) with `concurrency` in flight; results
        in input order, each with .text or .error (see hpcserve_jupyter.batch)."""
        from .batch import run_batch

        return run_batch(self, key, prompts, concurrency=concurrency, progress=progress,
                         system=system, **params)

    def bench(self, key: str, **kwargs: Any) -> Any:
        """Load-test a ready session (see hpcserve_jupyter.bench.run_bench)."""
        from .bench import run_bench

        return run_bench(self, key, **kwargs)
