"""A lean HTTP/1.1 client for the hot path of the proxy and the gateway: asyncio streams + h11.

Why not httpx there: its async stack (anyio streams and cancel scopes, pool locks, request and
response models, URL parsing) cost about 0.7 ms per proxied request on the benchmark machine,
a third of the proxy's overhead over a direct request (issue 14, benchmarks/p1_proxy.py). h11
frames the messages as it does under httpx, so what reaches the engine is the same; this module
adds only what the proxy needs: keep-alive connections per origin (idle ones expire after 5 s,
as httpx's do), connect/read/write timeouts, and error classes named like httpx's, which the
proxy maps to 502/504. Health checks and other cold paths keep using httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

import h11

KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpx's default)
MAX_IDLE = 64  # idle connections kept in all (the httpx client had max_keepalive 64)
READ_SIZE = 65536
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Linux: acknowledge the answer's first segment at once. An engine that writes its status line
# and headers, then its first bytes of body, in two writes (Python's http.server does) has
# the second held by Nagle's algorithm until the first is acknowledged, and a delayed ACK
# costs up to 40 ms of time to first byte.
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class UpstreamError(Exception):
    """Any failure to exchange a request with the upstream (httpx.HTTPError's place)."""


class ConnectError(UpstreamError):
    """The connection could not be opened (refused, unreachable, TLS handshake failed)."""


class TimeoutException(UpstreamError):
    pass


class ConnectTimeout(TimeoutException):
    pass


class ReadTimeout(TimeoutException):
    pass


class WriteTimeout(TimeoutException):
    pass


class ReadError(UpstreamError):
    pass


class WriteError(UpstreamError):
    pass


class RemoteProtocolError(UpstreamError):
    """The upstream broke HTTP/1.1 (e.g. closed the connection mid-answer)."""


class LocalProtocolError(UpstreamError):
    """The request cannot be sent as HTTP/1.1 (e.g. a header h11 refuses)."""


class _StaleConnection(Exception):
    """A kept-alive connection was closed by the server before it answered: retry once."""


@dataclass(frozen=True)
class Origin:
    """Where a request goes: scheme, host, port, the Host header and the endpoint's own path."""

    scheme: str
    host: str
    port: int
    host_header: str
    base_path: str = ""

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


@dataclass(frozen=True)
class Timeouts:
    connect: float
    read: float
    write: float


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(our_role=h11.CLIENT)
        self.sock = writer.get_extra_info("socket")
        self.key: tuple[str, str, int] | None = None
        self.idle_since = 0.0
        self.reused = False
        self.got_bytes = False  # of the current answer (a stale connection sends none)

    def usable(self) -> bool:
        return (not self.reader.at_eof() and not self.writer.transport.is_closing()
                and self.h11.our_state is h11.IDLE and self.h11.their_state is h11.IDLE)

    def quickack(self) -> None:
        if _QUICKACK is not None and self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Response:
    """The status and headers of an answer; the body streams from `aiter_raw` (bytes as sent,
    without transfer coding, content codings untouched). `aclose` ends the exchange."""

    def __init__(self, pool: Pool, conn: _Connection, event: h11.Response) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status_code = event.status_code
        self.reason_phrase = event.reason.decode("latin-1")
        self._headers = event.headers
        self._done = False
        self._pending: h11.Event | None = None
        self.at_end = False  # the chunk just yielded was the body's last one

    def _peek_end(self, conn: _Connection) -> None:
        """After a chunk: is the end of the body already parsed (no more bytes to wait for)?"""
        try:
            event = conn.h11.next_event()
        except h11.RemoteProtocolError:
            return  # raised again, in order, by the next read
        if isinstance(event, h11.EndOfMessage):
            self.at_end = self._done = True
        elif event is not h11.NEED_DATA:
            self._pending = event

    def multi_items(self) -> list[tuple[str, str]]:
        """Every header (repeated ones repeated), names in lower case as h11 gives them."""
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self._headers]

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None or self._done:
            return
        while not self._done:
            if self._pending is not None:
                event, self._pending = self._pending, None
            else:
                event = await self._pool._next_event(conn)
            if isinstance(event, h11.Data):
                if event.data:
                    self._peek_end(conn)
                    yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._done = True
            else:
                raise RemoteProtocolError(f"unexpected {type(event).__name__} in the body")

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if not self._done and self._pending is None:
            # HEAD, 204 and 304 answers (and bodies already received) end without a read
            with contextlib.suppress(h11.RemoteProtocolError):
                while (event := conn.h11.next_event()) is not h11.NEED_DATA:
                    if isinstance(event, h11.EndOfMessage):
                        self._done = True
                        break
                    if not isinstance(event, h11.Data):
                        break
        if self._done:
            self._pool._release(conn)
        else:
            conn.close()  # the answer was not read to its end: the connection is spent


class Pool:
    """Keep-alive HTTP/1.1 connections per origin. Use it from one event loop."""

    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._nidle = 0
        self._ssl: ssl.SSLContext | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    # ------------------------------------------------------------------ connections

    async def _connect(self, origin: Origin) -> _Connection:
        tls = None
        if origin.scheme == "https":
            if self._ssl is None:
                import httpx  # its CA bundle and defaults, as the httpx client had

                self._ssl = httpx.create_ssl_context()
            tls = self._ssl
        try:
            async with asyncio.timeout(self.timeouts.connect):
                reader, writer = await asyncio.open_connection(
                    origin.host, origin.port, ssl=tls,
                    server_hostname=origin.host if tls else None, limit=READ_SIZE)
        except TimeoutError:
            raise ConnectTimeout(f"no connection to {origin.host}:{origin.port} within "
                                 f"{self.timeouts.connect:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(str(exc) or type(exc).__name__) from None
        return _Connection(reader, writer)

    def _checkout(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin.key)
        while idle:
            conn = idle.pop()
            self._nidle -= 1
            if conn.usable() and time.monotonic() - conn.idle_since < KEEPALIVE_EXPIRY:
                conn.reused = True
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection) -> None:
        """Back to the pool when the exchange ended cleanly and both sides keep it open."""
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            with contextlib.suppress(h11.LocalProtocolError):
                conn.h11.start_next_cycle()
        if self.closed or self._nidle >= MAX_IDLE or not conn.usable():
            conn.close()
            return
        if conn.key is None:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, []).append(conn)
        self._nidle += 1
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(KEEPALIVE_EXPIRY + 0.5,
                                                                  self._sweep)

    def _sweep(self) -> None:
        """Close idle connections that expired or that the server closed (no fd lingers for a
        stopped engine)."""
        self._sweeper = None
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            keep = [c for c in idle if c.usable() and now - c.idle_since < KEEPALIVE_EXPIRY]
            for c in idle:
                if c not in keep:
                    c.close()
            self._nidle -= len(idle) - len(keep)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._nidle and not self.closed:
            self._sweeper = asyncio.get_running_loop().call_later(KEEPALIVE_EXPIRY / 2,
                                                                  self._sweep)

    def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for c in idle:
                c.close()
        self._idle.clear()
        self._nidle = 0

    # ------------------------------------------------------------------ one exchange

    async def send(self, method: str, origin: Origin, target: str,
                   headers: list[tuple[str, str]],
                   body: bytes | AsyncIterable[bytes] | None = None,
                   retry_stale: bool = True) -> Response:
        """Send the request; return once the answer's status and headers are in."""
        conn = self._checkout(origin) if retry_stale else None  # a retry: a new connection
        fresh = conn is None
        if conn is None:
            conn = await self._connect(origin)
        conn.key = origin.key
        conn.got_bytes = False
        try:
            return await self._exchange(conn, method, origin, target, headers, body)
        except _StaleConnection:
            conn.close()
            if fresh or not retry_stale:
                raise RemoteProtocolError("Server disconnected without sending a response."
                                          ) from None
            return await self.send(method, origin, target, headers, body, retry_stale=False)
        except BaseException:
            conn.close()
            raise

    async def _exchange(self, conn: _Connection, method: str, origin: Origin, target: str,
                        headers: list[tuple[str, str]],
                        body: bytes | AsyncIterable[bytes] | None) -> Response:
        h = _request_headers(method, origin, headers, body)
        # A kept-alive connection the server closed just as we reused it fails before any byte
        # of an answer: resend once on a new one, idempotent requests with a replayable body only.
        retryable = conn.reused and method in IDEMPOTENT and (body is None
                                                              or isinstance(body, bytes))
        try:
            request = h11.Request(method=method, target=target, headers=h)
            head = conn.h11.send(request) or b""
            if body is None or isinstance(body, bytes):
                data = conn.h11.send(h11.Data(data=body)) if body else b""
                await self._write(conn, head + (data or b"") + (conn.h11.send(
                    h11.EndOfMessage()) or b""))
            else:
                await self._write(conn, head)
                try:
                    async for chunk in body:
                        if chunk:
                            await self._write(conn, conn.h11.send(h11.Data(data=chunk)) or b"")
                    await self._write(conn, conn.h11.send(h11.EndOfMessage()) or b"")
                except WriteError:
                    pass  # the server may have answered early (e.g. 413): read what it said
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(str(exc)) from None
        except WriteError:
            if retryable:
                raise _StaleConnection() from None
            raise
        conn.quickack()
        while True:
            try:
                event = await self._next_event(conn)
            except (RemoteProtocolError, ReadError):
                if retryable and not conn.got_bytes:
                    raise _StaleConnection() from None
                raise
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                return Response(self, conn, event)
            raise RemoteProtocolError(f"unexpected {type(event).__name__} before the answer")

    async def _write(self, conn: _Connection, data: bytes) -> None:
        if not data:
            return
        try:
            conn.writer.write(data)
            if conn.writer.transport.get_write_buffer_size():
                async with asyncio.timeout(self.timeouts.write):
                    await conn.writer.drain()
        except TimeoutError:
            raise WriteTimeout(f"sending took over {self.timeouts.write:g} s") from None
        except (OSError, RuntimeError) as exc:
            raise WriteError(str(exc) or type(exc).__name__) from None

    async def _next_event(self, conn: _Connection) -> h11.Event:
        while True:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise RemoteProtocolError(str(exc)) from None
            if event is not h11.NEED_DATA:
                if event is h11.PAUSED:
                    raise RemoteProtocolError("the server sent more than one answer")
                if isinstance(event, h11.ConnectionClosed):
                    raise RemoteProtocolError("Server disconnected without sending a "
                                              "complete message.")
                return event  # type: ignore[return-value]
            try:
                async with asyncio.timeout(self.timeouts.read):
                    data = await conn.reader.read(READ_SIZE)
            except TimeoutError:
                raise ReadTimeout(f"no data for {self.timeouts.read:g} s") from None
            except (OSError, ssl.SSLError) as exc:
                raise ReadError(str(exc) or type(exc).__name__) from None
            if data:
                conn.got_bytes = True
            try:
                conn.h11.receive_data(data)
            except h11.RemoteProtocolError as exc:
                raise RemoteProtocolError(str(exc)) from None


def _request_headers(method: str, origin: Origin, headers: list[tuple[str, str]],
                     body: bytes | AsyncIterable[bytes] | None) -> list[tuple[bytes, bytes]]:
    """The headers httpx would send: Host first (and Content-Length: 0 for a POST, PUT or PATCH
    without body framing), then the caller's, then the body's framing if the caller set none."""
    names = {k.lower() for k, _ in headers}
    framed = "content-length" in names or "transfer-encoding" in names
    out: list[tuple[bytes, bytes]] = []
    if "host" not in names:
        out.append((b"Host", origin.host_header.encode("ascii")))
    if not framed and method in ("POST", "PUT", "PATCH") and not body:
        out.append((b"Content-Length", b"0"))
    out.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    if not framed and body:
        if isinstance(body, bytes):
            out.append((b"Content-Length", str(len(body)).encode()))
        else:
            out.append((b"Transfer-Encoding", b"chunked"))
    return out
