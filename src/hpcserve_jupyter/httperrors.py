"""How hpcserve's two HTTP clients (the engine client, `client.py`, and the remote facade,
`remote.py`) read an error answer and a failed connection: one policy, so an error body shape
learned once is understood by both, and "cannot reach ..." reads the same everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from .errors import HpcserveError, TargetUnreachable


@dataclass(frozen=True)
class ErrorBody:
    """What an error answer says: the message, how to fix it (`hint`), and the kind of error
    when the server named one (our error class name, or an OpenAI error type)."""

    message: str
    hint: str | None = None
    kind: str | None = None


def error_of(body: Any, fallback: str = "") -> ErrorBody:
    """The error a decoded JSON body describes; `fallback` when it says nothing.

    Shapes read: ours `{"error": message, "detail": hint, "type": kind}`; OpenAI's
    `{"error": {"message", "type", ...}}` (our gateway adds `detail`); FastAPI's
    `{"detail": ...}`; vLLM's `{"message": ...}`; any other JSON value as its text.
    """
    if not isinstance(body, dict):
        return ErrorBody(fallback if body is None else str(body))
    err = body.get("error")
    fields = err if isinstance(err, dict) else body
    message = err if err and not isinstance(err, dict) else fields.get("message")
    hint = fields.get("detail", body.get("detail"))
    kind = fields.get("type")
    if not message and hint:  # FastAPI: the detail is the whole story
        message, hint = hint, None
    if not message:
        message = str(err) if err else fallback
    return ErrorBody(str(message), None if hint is None else str(hint),
                     None if kind is None else str(kind))


def response_error(response: httpx.Response) -> ErrorBody:
    """The error an HTTP answer describes (its body read first if it was streamed; an async
    stream must be read by the caller)."""
    if response.is_stream_consumed is False:
        response.read()
    try:
        body = response.json()
    except ValueError:  # not JSON (or not text): its text is the message
        body = None
    return error_of(body, response.text.strip()[:500] or response.reason_phrase)


def unreachable(what: str, exc: BaseException, error: type[HpcserveError] = TargetUnreachable,
                hint: str | None = None) -> HpcserveError:
    """`cannot reach <what>: <why>` as the error type the caller's users expect."""
    why = f"{type(exc).__name__}{': ' + str(exc) if str(exc) else ''}"
    return error(f"cannot reach {what}: {why}", hint=hint)


@contextlib.contextmanager
def unreachable_on_http_error(what: str, error: type[HpcserveError] = TargetUnreachable,
                              hint: str | None = None) -> Iterator[None]:
    """Turn a connection failure (any httpx.HTTPError) inside the block into `unreachable`."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise unreachable(what, exc, error, hint) from None
