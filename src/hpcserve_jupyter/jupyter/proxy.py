"""The proxy /hpcserve/proxy/{id}/{path}: any HTTP method to a session's own endpoint.

Only registered sessions are reachable: the upstream URL is always the session's stored endpoint
plus a normalised path (no `..`, no absolute URL, no `@`, no encoded slash or backslash).
Request and response bodies stream both ways; `text/event-stream` and chunked answers are flushed
chunk by chunk. Jupyter's cookies, the client's Authorization and XSRF headers are removed and the
session's own API key is added. Traffic counts as activity for the session's idle timer and for
Jupyter's idle culling.
"""

from __future__ import annotations

import asyncio
import collections
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import httpx
from jupyter_server.auth.decorator import authorized
from jupyter_server.auth.utils import HTTP_METHOD_TO_AUTH_ACTION
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.iostream import StreamClosedError

from ..sessions import State
from .base import AUTH_RESOURCE, ApiError, ClientGone, HpcserveHandler, RelayMixin
from .replicas import NoReplica, Overloaded, Replica, ReplicaGroup

if TYPE_CHECKING:
    from ..sessions import Session

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade", "expect"})
# Never forwarded upstream: the client's credentials for Jupyter (the session key replaces them).
CLIENT_ONLY = frozenset({"host", "authorization", "cookie", "x-xsrftoken", "x-xsrf-token",
                         "x-csrftoken", "origin", "referer"})
JUPYTER_QUERY_ARGS = frozenset({"token", "_xsrf"})
RESPONSE_SKIP = HOP_BY_HOP | {"server", "date"}
# Requests that generate (POST, PUT, PATCH) go through admission control; reads do not.
ADMITTED_METHODS = frozenset({"POST", "PUT", "PATCH"})
_BACKGROUND: set[asyncio.Task[None]] = set()


# ---------------------------------------------------------------------- path safety


def safe_path(raw: str) -> str:
    """Normalise the (still percent-encoded) path after /proxy/{id}, or raise ApiError 400.

    Refused: `..` segments (also encoded), encoded slashes and backslashes, `@`, absolute URLs
    (`scheme://` or `//host`), control characters and NUL. `.` segments and repeated slashes
    are dropped. The result starts with `/` and is appended to the session's endpoint.
    """
    low = raw.lower()
    why = None
    if "\\" in raw or "%5c" in low:
        why = "a backslash"
    elif "%2f" in low:
        why = "an encoded slash"
    elif "@" in raw or "%40" in low:
        why = "'@'"
    elif "://" in raw or "%3a%2f%2f" in low or low.startswith("//"):
        why = "an absolute URL"
    elif any(ord(c) < 0x20 or c in " #" for c in raw) or "%00" in low:
        why = "a control character"
    if why is None:
        segments = []
        for seg in raw.split("/"):
            decoded = urllib.parse.unquote(seg)
            if decoded == "..":
                why = "'..'"
                break
            if seg in ("", ".") or decoded == ".":
                continue
            if ":" in decoded and not segments:
                why = "a scheme"
                break
            segments.append(seg)
    if why is not None:
        raise ApiError(400, f"the proxied path contains {why}",
                       detail="the proxy only reaches paths under the session's own endpoint",
                       reason="bad-path")
    path = "/" + "/".join(segments)
    if raw.endswith("/") and path != "/":
        path += "/"
    return path


def clean_query(query: str) -> str:
    """The query string without Jupyter's own arguments (token, _xsrf); the rest untouched."""
    if not query:
        return ""
    kept = [p for p in query.split("&")
            if p and urllib.parse.unquote_plus(p.split("=", 1)[0]) not in JUPYTER_QUERY_ARGS]
    return "&".join(kept)


def upstream_url(endpoint: str, path: str, query: str) -> httpx.URL:
    """endpoint + path (+ query), checked to stay on the endpoint's scheme, host and port."""
    base = httpx.URL(endpoint)
    url = httpx.URL(endpoint.rstrip("/") + path + (f"?{query}" if query else ""))
    if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
        raise ApiError(400, "the proxied path leaves the session's endpoint", reason="bad-path")
    return url


def forward_headers(handler: JupyterHandler, api_key: str | None,
                    *, allow: frozenset[str] | None = None) -> list[tuple[str, str]]:
    """The client's headers minus hop-by-hop, Jupyter credentials and cookies; plus the key."""
    out: list[tuple[str, str]] = []
    try:
        jupyter_cookie = handler.identity_provider.get_cookie_name(handler)
    except Exception:  # an identity provider without cookies
        jupyter_cookie = ""
    for name, value in handler.request.headers.get_all():
        low = name.lower()
        if allow is not None and low not in allow:
            continue
        if low in HOP_BY_HOP or low in CLIENT_ONLY:
            if low == "cookie":
                kept = _other_cookies(value, jupyter_cookie)
                if kept:
                    out.append(("Cookie", kept))
            continue
        out.append((name, value))
    if not any(k.lower() == "accept-encoding" for k, _ in out):
        out.append(("Accept-Encoding", "identity"))  # bytes are relayed as they come
    if api_key:
        out.append(("Authorization", f"Bearer {api_key}"))
    return out


def _other_cookies(header: str, jupyter_cookie: str) -> str:
    kept = []
    for part in header.split(";"):
        name = part.split("=", 1)[0].strip()
        if not name or name == "_xsrf" or name == jupyter_cookie or name.startswith(
                ("username-", "jupyterhub-")):
            continue
        kept.append(part.strip())
    return "; ".join(kept)


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
    current = handler.ext.manager.store.get(session.id) or session
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

    def __init__(self, group: ReplicaGroup, replica: Replica, response: httpx.Response) -> None:
        self.group = group
        self.replica = replica
        self.response = response
        self.start = time.monotonic()
        self._released = False

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
    client = handler.ext.client()
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
            raise _unreachable(handler, session, str(exc)) from None
        try:
            url = upstream_url(replica.url, path, query)
            request = client.build_request(method, url, headers=headers,
                                           content=body() if body else None)
            response = await client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            group.failed(replica)
            group.release(replica)
            tried.add(replica.url)
            if can_retry() and len(tried) < len(group.replicas):
                continue
            raise _unreachable(handler, session, f"cannot connect to replica {replica.url} "
                               f"({type(exc).__name__})") from None
        except httpx.TimeoutException as exc:
            group.release(replica)
            raise _unreachable(handler, session, type(exc).__name__, 504) from None
        except httpx.HTTPError as exc:
            group.release(replica)
            raise _unreachable(handler, session, f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            group.release(replica)
            raise
        group.succeeded(replica)
        return Upstream(group, replica, response)


async def relay(handler: HpcserveHandler, up: Upstream, session: Session) -> None:
    """Status, headers and body of the upstream answer to the client, each chunk flushed as it
    arrives (server-sent events and chunked answers pass through unbuffered)."""
    response = up.response
    flushed = False
    try:
        handler.set_status(response.status_code, reason=response.reason_phrase or "Unknown")
        seen: set[str] = set()
        for name, value in response.headers.multi_items():
            low = name.lower()
            if low in RESPONSE_SKIP:
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
        async for chunk in response.aiter_raw():
            handler.write(chunk)
            await handler.flush()
            flushed = True
            if time.monotonic() - touched > 15:
                handler.activity(session)
                touched = time.monotonic()
        if not flushed:
            await handler.flush()
    except StreamClosedError:
        return  # the client went away; closing the upstream answer stops the engine's work
    except httpx.HTTPError as exc:
        if not flushed:
            status = 504 if isinstance(exc, httpx.TimeoutException) else 502
            raise _unreachable(handler, session, type(exc).__name__, status) from None
        handler.log.warning("hpcserve proxy: %s broke mid-answer: %r", session.name, exc)
        handler.request.connection.close()  # no terminating chunk: the client sees the break
    finally:
        await up.close()
        handler.activity(session)


# ---------------------------------------------------------------------- request body pipe


class BodyPipe:
    """Request body chunks from tornado's data_received to httpx, with back pressure."""

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


# ---------------------------------------------------------------------- the handler


@web.stream_request_body
class ProxyHandler(RelayMixin, HpcserveHandler):
    """Every method to the session's endpoint; the body streams as it arrives."""

    _upstream: asyncio.Future[Upstream] | None = None
    _pipe: BodyPipe | None = None
    _session: Session | None = None

    async def prepare(self) -> None:
        await super().prepare()
        # Authenticate and authorize before anything is sent upstream; the body arrives after
        # prepare, so this cannot wait for the method (which checks again). One opener per
        # action: @authorized remembers the action of its first call.
        write = HTTP_METHOD_TO_AUTH_ACTION.get(self.request.method or "", "write") != "read"
        opener = self._open_for_write if write else self._open_for_read
        await opener(*self.path_args, **self.path_kwargs)

    @web.authenticated
    @authorized("read", AUTH_RESOURCE)
    async def _open_for_read(self, id: str, path: str | None = None) -> None:
        await self._open(id)

    @web.authenticated
    @authorized("write", AUTH_RESOURCE)
    async def _open_for_write(self, id: str, path: str | None = None) -> None:
        await self._open(id)

    async def _open(self, id: str) -> None:
        mgr = await self.manager()
        prefix = url_path_join(self.base_url, "hpcserve/proxy/")
        raw = self.request.path
        rest = raw[len(prefix):] if raw.startswith(prefix) else ""
        upstream_path = safe_path("/" + rest.partition("/")[2])
        session = mgr.get(id)
        if id not in (session.id, session.name):
            raise ApiError(404, f"no session {id!r}", detail="use the full session id or name")
        require_ready(session)
        self._session = session
        self.activity(session)
        # Content-Length (if the client sent one) is kept, so the body goes out as it came:
        # with a length, or chunked.
        headers = forward_headers(self, mgr.api_key(session))
        headers.append(("X-Forwarded-Prefix", url_path_join(prefix, session.id)))
        has_body = int(self.request.headers.get("Content-Length", "0") or 0) > 0 or \
            "chunked" in self.request.headers.get("Transfer-Encoding", "").lower()
        pipe = self._pipe = BodyPipe() if has_body else None
        self._upstream = asyncio.ensure_future(open_upstream(
            self, session, method=self.request.method or "GET", path=upstream_path,
            query=clean_query(self.request.query), headers=headers,
            body=pipe.stream if pipe else None,
            can_retry=(lambda: not pipe.consumed) if pipe else (lambda: True),
            admit=self.request.method in ADMITTED_METHODS))
        if pipe is not None:
            self._upstream.add_done_callback(lambda _: pipe.abandon())

    async def data_received(self, chunk: bytes) -> None:
        if self._pipe is not None:
            await self._pipe.feed(chunk)

    async def _relay(self) -> None:
        assert self._upstream is not None and self._session is not None
        if self._pipe is not None:
            self._pipe.finish()
        try:
            up = await self.until_gone(self._upstream)
        except ClientGone:
            return
        await relay(self, up, self._session)

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._pipe is not None:
            self._pipe.abandon()

    def on_finish(self) -> None:
        pending = self._upstream
        if pending is not None:
            if not pending.done():
                pending.cancel()  # open_upstream releases its replica slot when cancelled
            elif not pending.cancelled() and pending.exception() is None:
                task = asyncio.ensure_future(pending.result().close())  # no-op when relayed
                _BACKGROUND.add(task)
                task.add_done_callback(_BACKGROUND.discard)
        super().on_finish()

    @web.authenticated
    @authorized
    async def get(self, id: str, path: str | None = None) -> None:
        await self._relay()

    @web.authenticated
    @authorized
    async def head(self, id: str, path: str | None = None) -> None:
        await self._relay()

    @web.authenticated
    @authorized
    async def post(self, id: str, path: str | None = None) -> None:
        await self._relay()

    @web.authenticated
    @authorized
    async def put(self, id: str, path: str | None = None) -> None:
        await self._relay()

    @web.authenticated
    @authorized
    async def patch(self, id: str, path: str | None = None) -> None:
        await self._relay()

    @web.authenticated
    @authorized
    async def delete(self, id: str, path: str | None = None) -> None:
        await self._relay()

    @web.authenticated
    @authorized
    async def options(self, id: str, path: str | None = None) -> None:  # type: ignore[override]
        await self._relay()
