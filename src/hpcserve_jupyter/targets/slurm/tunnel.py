"""Local port forwards over a cluster's SSH connection (`ssh -L`, without OpenSSH).

A tunnel listens on 127.0.0.1; each accepted connection gets its own direct-tcpip channel from
`open_channel` (the connection's, looked up per connection), so after a reconnect new
connections simply work again on the same local port.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

import paramiko

from hpcserve_jupyter.errors import HpcserveError

log = logging.getLogger(__name__)

_BUFFER = 64 * 1024
_IDLE_CHECK = 1.0  # seconds between liveness checks of an idle tunnelled connection
# Opens a forward to (remote_host, remote_port) for a client at `origin` (host, port).
ChannelOpener = Callable[[str, int, tuple[str, int]], paramiko.Channel]


class Tunnel:
    """A listening port on 127.0.0.1; each accepted connection gets its own direct-tcpip channel.

    Channels are opened on the connection's current transport, so after a reconnect new
    connections simply work again on the same local port.
    """

    def __init__(self, open_channel: ChannelOpener, remote_host: str, remote_port: int) -> None:
        self._open_channel = open_channel
        self.remote = (remote_host, remote_port)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        host, port = self._listener.getsockname()[:2]
        self.local_address: tuple[str, int] = (host, port)
        self._lock = threading.Lock()
        self._links: set[tuple[socket.socket, paramiko.Channel]] = set()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"ssh-tunnel-{port}")
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, peer = self._listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(0.1)  # e.g. out of file descriptors: keep serving later ones
                continue
            threading.Thread(target=self._serve, args=(client, peer), daemon=True,
                             name=f"ssh-tunnel-{self.local_address[1]}-{peer[1]}").start()

    def _serve(self, client: socket.socket, peer: tuple[str, int]) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            channel = self._open_channel(*self.remote, peer[:2])
        except HpcserveError as exc:
            log.warning("tunnel %s:%d -> %s:%d: %s", *self.local_address, *self.remote, exc)
            client.close()
            return
        link = (client, channel)
        with self._lock:
            if self._closed.is_set():
                client.close()
                channel.close()
                return
            self._links.add(link)
        try:
            _pump(client, channel, self._closed)
        finally:
            with self._lock:
                self._links.discard(link)
            # shutdown first: close() alone sends no FIN while the other copy thread is still
            # blocked in recv on this socket, and the client would wait for its read timeout.
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()
            with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
                channel.close()  # raises on a dropped connection

    def close(self) -> None:
        """Stop listening and cut every forwarded connection."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            links = list(self._links)
        for client, channel in links:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            # on a dropped connection close() raises EOFError: the other links must still be
            # cut and the caller (a session's stop) must not fail for it
            with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
                channel.close()
        self._thread.join(timeout=2)


def _pump(client: socket.socket, channel: paramiko.Channel, stop: threading.Event) -> None:
    """Copy bytes both ways as they arrive (no buffering), honouring half-closes.

    One blocking thread per direction: a Channel.recv blocked on paramiko's condition variable
    wakes with fewer hops than a selector on the channel's pipe, which measurably cuts the
    per-request latency the tunnel adds (benchmarks/p2_tunnel.py). `stop` is honoured by
    closing the socket and channel (see Tunnel.close), which ends both blocking calls.
    """

    def upstream() -> None:
        try:
            while chunk := client.recv(_BUFFER):
                channel.sendall(chunk)
            channel.shutdown_write()  # the client half-closed: pass the EOF on
        except (OSError, paramiko.SSHException, EOFError):
            with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
                channel.close()

    sender = threading.Thread(target=upstream, daemon=True, name="ssh-tunnel-up")
    sender.start()
    # A transport killed under us does not always wake a blocked recv: wake up every second
    # while idle and give up once the transport is gone, so the client sees the stream break.
    channel.settimeout(_IDLE_CHECK)
    try:
        while True:
            try:
                chunk = channel.recv(_BUFFER)
            except TimeoutError:
                transport = channel.get_transport()
                if stop.is_set() or transport is None or not transport.is_active():
                    return  # the caller closes the client socket: the stream ends with an error
                continue
            if not chunk:
                break
            client.sendall(chunk)
        if channel.closed or stop.is_set():
            return  # the server side is gone entirely: nothing more can be sent
        client.shutdown(socket.SHUT_WR)  # the server half-closed; the client may still send
        sender.join()
    except (OSError, paramiko.SSHException, EOFError):
        return
