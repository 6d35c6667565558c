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
import urllib.parse
from typing import TYPE_CHECKING

from jupyter_server.auth.decorator import authorized
from jupyter_server.auth.utils import HTTP_METHOD_TO_AUTH_ACTION
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .base import AUTH_RESOURCE, ApiError, ClientGone, HpcserveHandler, RelayMixin
from .upstream import (
    ACTIVITY_DELAY,
    HOP_BY_HOP,
    BodyPipe,
    Upstream,
    open_upstream,
    relay,
    require_ready,
)

if TYPE_CHECKING:
    from ..sessions import Session

# Never forwarded upstream: the client's credentials for Jupyter (the session key replaces them).
CLIENT_ONLY = frozenset({"host", "authorization", "cookie", "x-xsrftoken", "x-xsrf-token",
                         "x-csrftoken", "origin", "referer"})
JUPYTER_QUERY_ARGS = frozenset({"token", "_xsrf"})
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
        svc = await self.service()
        prefix = url_path_join(self.base_url, "hpcserve/proxy/")
        raw = self.request.path
        rest = raw[len(prefix):] if raw.startswith(prefix) else ""
        upstream_path = safe_path("/" + rest.partition("/")[2])
        session = self.ext.lookup().get(id)
        if id not in (session.id, session.name):
            raise ApiError(404, f"no session {id!r}", detail="use the full session id or name")
        require_ready(session)
        self._session = session
        # Content-Length (if the client sent one) is kept, so the body goes out as it came:
        # with a length, or chunked.
        headers = forward_headers(self, svc.api_key(session))
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
        # Activity (an SQLite write, at most once a second per session) is recorded shortly
        # after the request left, off the path to the first byte; relay() records it again at
        # the end, and every 15 s of a long answer.
        asyncio.get_running_loop().call_later(ACTIVITY_DELAY, self.activity, session)
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

    def compute_etag(self) -> None:
        """No Etag of our own: the answer is the engine's (and its last chunk may still be in
        the buffer at finish, where tornado would hash it and might answer 304 instead)."""
        return None

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._pipe is not None:
            self._pipe.abandon()

    def on_finish(self) -> None:
        pending = self._upstream
        if pending is not None:
            if not pending.done():
                pending.cancel()  # open_upstream releases its replica slot when cancelled
            elif not pending.cancelled() and pending.exception() is None and \
                    not pending.result().closed:  # relayed answers are closed already
                task = asyncio.ensure_future(pending.result().close())
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
