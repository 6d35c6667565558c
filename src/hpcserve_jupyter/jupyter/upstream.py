"""The upstream half of the proxy and the gateway: one request to a session's replica, its
streamed answer relayed to the client, and the errors that say why an engine cannot answer.

Both front doors (/hpcserve/proxy/ and /hpcserve/v1/) use it: replica choice and admission
control (replicas.py), failover on connection errors, status/headers/body relayed unbuffered.
Requests go out on the lean HTTP/1.1 client of h11client.py (one pool per server extension).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from tornado.iostream import StreamClosedError

from ..sessions import State
from .base import ApiError, HpcserveHandler
from .h11client import (
    ConnectError,
    ConnectTimeout,
    Origin,
    Response,
    TimeoutException,
    UpstreamError,
)
from .replicas import NoReplica, Overloaded, Replica, ReplicaGroup
from .rewrite import ModelRenamer

if TYPE_CHECKING:
    import httpx

    from ..sessions import Session
    from .usage import StreamUsage

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade", "expect"})
RESPONSE_SKIP = HOP_BY_HOP | {"server", "date"}
ACTIVITY_DELAY = 0.05  # seconds after a request left that it counts as activity


# Paths and queries httpx sends unchanged (nothing to percent-encode; no dot segment).
_PLAIN_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")
_PLAIN_QUERY = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")


def upstream_url(endpoint: str, path: str, query: str) -> httpx.URL:
    """endpoint + path (+ query), checked to stay on the endpoint's scheme, host and port."""
    import httpx

    base = httpx.URL(endpoint)
    url = httpx.URL(endpoint.rstrip("/") + path + (f"?{query}" if query else ""))
    if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
        raise ApiError(400, "the proxied path leaves the session's endpoint", reason="bad-path")
    return url


@functools.lru_cache(maxsize=512)
def origin_of(endpoint: str) -> tuple[Origin, bool]:
    """The origin of a replica URL, and whether its own path can take a plain path as is."""
    import httpx

    url = httpx.URL(endpoint.rstrip("/"))
    port = url.port or (443 if url.scheme == "https" else 80)
    base = url.raw_path.decode("ascii")
    origin = Origin(url.scheme, url.host, port, url.netloc.decode("ascii"),
                    "" if base == "/" else base)
    return origin, not url.query and not url.fragment


def upstream_target(endpoint: str, path: str, query: str) -> tuple[Origin, str]:
    """(origin, request target) of endpoint + path (+ query), as `upstream_url` makes them:
    directly when nothing needs encoding, else through `upstream_url` and its checks."""
    origin, plain = origin_of(endpoint)
    if plain and path[:1] == "/" and "/." not in path and _PLAIN_PATH.fullmatch(path) and (
            not query or _PLAIN_QUERY.fullmatch(query)):
        return origin, origin.base_path + path + (f"?{query}" if query else "")
    url = upstream_url(endpoint, path, query)
    return origin, url.raw_path.decode("ascii")


# ---------------------------------------------------------------------- session checks


def require_ready(session: Session) -> None:
    """ApiError 503 while a session starts, 502 once it is gone."""
    info = {"session_id": session.id, "session_state": str(session.state)}
    if session.state == State.READY and session.endpoints:
        return
    if session.state in (State.PENDING, State.STARTING, State.READY):
        raise ApiError(503, f"session {session.name} is {session.state}: not serving yet",
                       detail="wait until it is ready (GET /hpcserve/api/events)",
                       headers={"Retry-After": "2"}, reason="starting", **info)
    raise ApiError(502, f"session {session.name} is {session.state}: it is gone",
                   detail=session.reason or None, reason="gone", **info)


def _unreachable(handler: HpcserveHandler, session: Session, why: str,
                 status: int = 502) -> ApiError:
    current = handler.ext.service.find(session.id) or session
    info = {"session_id": session.id, "session_state": str(current.state)}
    if current.state.terminal or current.state == State.STOPPING:
        return ApiError(502, f"session {session.name} is {current.state}: it is gone",
                        detail=current.reason or None, reason="gone", **info)
    if status == 504:
        return ApiError(504, f"session {session.name} did not answer in time: {why}",
                        detail="the engine is busy or stuck; see its logs", reason="timeout",
                        **info)
    return ApiError(502, f"session {session.name} is unreachable: {why}",
                    detail="the engine may have crashed; see GET "
                    f"/hpcserve/api/sessions/{session.id}/logs", reason="unreachable", **info)


# ---------------------------------------------------------------------- upstream exchange


class Upstream:
    """One forwarded exchange: the replica it holds a slot on and the streamed response."""

    def __init__(self, group: ReplicaGroup, replica: Replica, response: Response) -> None:
        self.group = group
        self.replica = replica
        self.response = response
        self.start = time.monotonic()
        self._released = False

    @property
    def closed(self) -> bool:
        return self._released

    async def close(self) -> None:
        if not self._released:
            self._released = True
            try:
                await self.response.aclose()
            finally:
                self.group.release(self.replica, duration=time.monotonic() - self.start)


async def open_upstream(handler: HpcserveHandler, session: Session, *, method: str, path: str,
                        query: str, headers: list[tuple[str, str]],
                        body: Callable[[], Any] | None = None,
                        can_retry: Callable[[], bool] = lambda: True,
                        admit: bool = True) -> Upstream:
    """Send the request to a replica (round robin, failing over on connection errors) and
    return once the response headers are in. Errors become ApiError 429/502/503/504."""
    group = handler.ext.group(session)
    client = handler.ext.upstream_pool()
    tried: set[str] = set()
    while True:
        try:
            replica = await group.acquire(frozenset(tried), admit=admit)
        except Overloaded as exc:
            raise ApiError(429, f"session {session.name} is busy: {exc.message}",
                           detail="retry after the seconds in Retry-After",
                           headers={"Retry-After": str(exc.retry_after)}, reason="overloaded",
                           session_id=session.id, session_state=str(session.state)) from None
        except NoReplica as exc:
            if session.degraded:
                raise ApiError(503, f"session {session.name} is degraded: {exc}",
                               detail=session.degraded_reason or None, reason="degraded",
                               headers={"Retry-After": "15"}, session_id=session.id,
                               session_state=str(session.state)) from None
            raise _unreachable(handler, session, str(exc)) from None
        try:
            origin, target = upstream_target(replica.url, path, query)
            response = await client.send(method, origin, target, headers,
                                         body() if body else None)
        except (ConnectError, ConnectTimeout) as exc:
            group.failed(replica)
            group.release(replica)
            tried.add(replica.url)
            if can_retry() and len(tried) < len(group.replicas):
                continue
            raise _unreachable(handler, session, f"cannot connect to replica {replica.url} "
                               f"({type(exc).__name__})") from None
        except TimeoutException as exc:
            group.release(replica)
            raise _unreachable(handler, session, type(exc).__name__, 504) from None
        except UpstreamError as exc:
            group.release(replica)
            raise _unreachable(handler, session, f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            group.release(replica)
            raise
        group.succeeded(replica)
        return Upstream(group, replica, response)


async def relay(handler: HpcserveHandler, up: Upstream, session: Session,
                rename: str | None = None, usage: StreamUsage | None = None) -> None:
    """Status, headers and body of the upstream answer to the client, each chunk flushed as it
    arrives (server-sent events and chunked answers pass through unbuffered). The last chunk
    is left to `finish`, which sends it with the end of the answer in one write. `rename`:
    the model name a successful answer gives back (the gateway's; see rewrite.py); `usage`:
    the usage chunk a stream asked for, added before its end when the engine sent none
    (usage.py), after the last content has been flushed."""
    response = up.response
    flushed = False
    renamer = None
    if rename is not None and response.status_code == 200:
        kind = next((v for k, v in response.multi_items() if k.lower() == "content-type"), "")
        renamer = ModelRenamer(rename, kind, usage)
    try:
        handler.set_status(response.status_code, reason=response.reason_phrase or "Unknown")
        seen: set[str] = set()
        for name, value in response.multi_items():
            low = name.lower()
            if low in RESPONSE_SKIP or (renamer and low == "content-length"):
                continue
            if low in seen:
                handler.add_header(name, value)
            else:
                handler.set_header(name, value)
                seen.add(low)
        if "content-type" not in seen:
            handler.clear_header("Content-Type")
        if handler.request.method == "HEAD" or response.status_code in (204, 304):
            return
        touched = time.monotonic()
        # Each chunk leaves at once (tornado turns Nagle's algorithm off only at finish; with
        # it on, an event waits for the client's delayed ACK of the one before).
        with contextlib.suppress(Exception):
            handler.request.connection.stream.set_nodelay(True)  # type: ignore[attr-defined]
        async for chunk in response.aiter_raw():
            if renamer is not None:
                chunk = renamer.feed(chunk)
                if response.at_end:
                    chunk += renamer.end()
            handler.write(chunk)
            if (response.at_end and not (renamer and renamer.usage_due)) or not chunk:
                continue  # the loop ends; finish() sends it (or nothing to send yet)
            await handler.flush()
            flushed = True
            if time.monotonic() - touched > 15:
                handler.activity(session)
                touched = time.monotonic()
        if renamer is not None:  # the body's end came without data (not seen by at_end)
            handler.write(renamer.end())
            if renamer.usage_due and renamer.usage is not None:
                handler.write(renamer.closing(await renamer.usage.chunk()))
    except StreamClosedError:
        return  # the client went away; closing the upstream answer stops the engine's work
    except UpstreamError as exc:
        if not flushed:
            status = 504 if isinstance(exc, TimeoutException) else 502
            raise _unreachable(handler, session, type(exc).__name__, status) from None
        handler.log.warning("hpcserve proxy: %s broke mid-answer: %r", session.name, exc)
        handler.request.connection.close()  # no terminating chunk: the client sees the break
    finally:
        await up.close()
        handler.activity(session)


# ---------------------------------------------------------------------- request body pipe


class BodyPipe:
    """Request body chunks from tornado's data_received to the upstream, with back pressure."""

    def __init__(self, limit: int = 8) -> None:
        self._buf: collections.deque[bytes] = collections.deque()
        self._limit = limit
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._eof = False
        self._gone = False
        self.consumed = False

    async def feed(self, chunk: bytes) -> None:
        while len(self._buf) >= self._limit and not self._gone:
            self._writable.clear()
            await self._writable.wait()
        if not self._gone:
            self._buf.append(chunk)
            self._readable.set()

    def finish(self) -> None:
        self._eof = True
        self._readable.set()

    def abandon(self) -> None:
        """Nobody reads any more (upstream answered or failed): drop what comes."""
        self._gone = True
        self._buf.clear()
        self._writable.set()

    async def stream(self) -> AsyncIterator[bytes]:
        self.consumed = True
        while True:
            while self._buf:
                chunk = self._buf.popleft()
                self._writable.set()
                yield chunk
            if self._eof or self._gone:
                return
            self._readable.clear()
            await self._readable.wait()


