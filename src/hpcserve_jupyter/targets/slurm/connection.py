"""One SSH connection to a cluster's login node, for commands, files (SFTP) and tunnels.

Why one connection: clusters rate-limit logins (and some ask for a second factor), so every
command, SFTP call and port forward of a cluster goes over the same `SSHConnection` (see
`sharing.shared_connection`), which reconnects with backoff when the network drops it. It
implements the `shell.Shell` contract.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import paramiko
from paramiko.ssh_exception import PartialAuthentication

from .shell import (
    DEFAULT_TIMEOUT,
    AuthenticationFailed,
    CommandResult,
    CommandTimeout,
    FileStat,
    HostKeyMismatch,
    RemoteCommandError,
    SSHUnreachable,
    UnknownHostKey,
    build_command,
    describe_error,
    shorten,
)
from .sshconfig import (
    DEFAULT_SSH_PORT,
    Endpoint,
    KeyUnusable,
    SSHSettings,
    agent_keys,
    load_known_hosts,
    load_private_key,
    load_ssh_config,
    prefer_known_key_types,
    record_host_key,
    resolve_endpoint,
    resolve_jump_chain,
)
from .tunnel import Tunnel

log = logging.getLogger(__name__)

T = TypeVar("T")

_BUFFER = 64 * 1024
_POLL = 0.25
# Errors that mean "the SSH connection is gone", as opposed to a remote file or command error.
_CONNECTION_ERRORS = (paramiko.SSHException, EOFError, ConnectionError, TimeoutError)


class SSHConnection:
    """One SSH connection to a cluster, shared by all commands, SFTP calls and tunnels.

    Thread-safe. Connects lazily; when the connection has dropped, the next use reconnects with
    exponential backoff. A command is never re-run: only the opening of a channel is retried.
    """

    def __init__(self, settings: SSHSettings, *,
                 on_close: Callable[[SSHConnection], None] | None = None) -> None:
        """`on_close` runs once the connection is closed (the shared registry forgets it)."""
        self.settings = settings
        self._on_close = on_close
        config = load_ssh_config(settings.ssh_config_file)
        self.endpoint = resolve_endpoint(settings.host, config, user=settings.user,
                                         port=settings.port, key_file=settings.key_file,
                                         proxy_jump=settings.proxy_jump)
        fallback = str(Path(settings.key_file).expanduser()) if settings.key_file else None
        self.jumps = resolve_jump_chain(self.endpoint.proxy_jump, config, fallback_key=fallback)
        self._lock = threading.RLock()
        self._transport: paramiko.Transport | None = None
        self._jump_transports: list[paramiko.Transport] = []
        self._generation = 0
        self._sftp_lock = threading.Lock()
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_transport: paramiko.Transport | None = None
        self._tunnels: dict[tuple[str, int], Tunnel] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<SSHConnection {self.label}>"

    def __enter__(self) -> SSHConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def label(self) -> str:
        """user@host:port (and the jump hosts), for messages."""
        via = " via " + ", ".join(hop.label for hop in self.jumps) if self.jumps else ""
        return self.endpoint.label + via

    @property
    def generation(self) -> int:
        """How many times this object has (re)connected; a change means a new transport."""
        return self._generation

    @property
    def transport(self) -> paramiko.Transport:
        """The live transport, connecting first if needed."""
        return self._ensure_transport()

    def is_connected(self) -> bool:
        transport = self._transport
        return transport is not None and transport.is_active()

    def connect(self) -> None:
        """Connect now (rather than on first use), to surface host key or login errors early."""
        self._ensure_transport()

    # -- connecting ----------------------------------------------------------------------

    def _ensure_transport(self) -> paramiko.Transport:
        with self._lock:
            if self._closed:
                raise SSHUnreachable(f"the connection to {self.label} was closed")
            transport = self._transport
            if transport is not None and transport.is_active():
                return transport
            if transport is not None:
                log.warning("SSH connection to %s dropped; reconnecting", self.label)
                self._close_transports()
            self._transport = self._connect_with_backoff()
            self._generation += 1
            log.info("connected to %s", self.label)
            return self._transport

    def _connect_with_backoff(self) -> paramiko.Transport:
        """Retry only network trouble; a host key or login problem will not fix itself."""
        attempts = max(1, self.settings.reconnect_attempts)
        delay = self.settings.reconnect_backoff
        for attempt in range(1, attempts + 1):
            try:
                return self._connect_once()
            except SSHUnreachable as exc:
                if attempt == attempts:
                    raise SSHUnreachable(
                        f"cannot reach {self.label} after {attempts} attempt(s): {exc.message}",
                        hint=exc.hint) from exc
                log.warning("%s (attempt %d of %d); retrying in %.1f s", exc.message, attempt,
                            attempts, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    def _connect_once(self) -> paramiko.Transport:
        transports: list[paramiko.Transport] = []
        try:
            for hop in [*self.jumps, self.endpoint]:
                sock = self._open_socket(hop, transports[-1] if transports else None)
                transports.append(self._handshake(hop, sock))
        except BaseException:
            for transport in reversed(transports):
                transport.close()
            raise
        self._jump_transports = transports[:-1]
        return transports[-1]

    def _open_socket(self, hop: Endpoint, via: paramiko.Transport | None
                     ) -> socket.socket | paramiko.Channel:
        """A TCP socket to the hop, or a direct-tcpip channel through the previous hop."""
        timeout = self.settings.connect_timeout
        try:
            if via is not None:
                return via.open_channel("direct-tcpip", (hop.hostname, hop.port),
                                        ("127.0.0.1", 0), timeout=timeout)
            sock = socket.create_connection((hop.hostname, hop.port), timeout=timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            # Small SSH packets (channel opens, streamed tokens) must not wait for delayed ACKs.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except (OSError, paramiko.SSHException, EOFError) as exc:
            through = " through the jump host" if via is not None else ""
            raise SSHUnreachable(
                f"cannot connect to {hop.hostname}:{hop.port}{through}: {describe_error(exc)}",
                hint="check the host name and port, and that the host is up and reachable",
            ) from exc

    def _handshake(self, hop: Endpoint, sock: socket.socket | paramiko.Channel
                   ) -> paramiko.Transport:
        """Key exchange, host key check, then login: an authenticated transport to the hop."""
        timeout = self.settings.connect_timeout
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = timeout
            transport.handshake_timeout = timeout
            transport.auth_timeout = timeout
            known = load_known_hosts([self.settings.user_known_hosts_file,
                                      self.settings.known_hosts_file])
            prefer_known_key_types(transport, known.lookup(hop.host_key_name))
            try:
                transport.start_client(timeout=timeout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise SSHUnreachable(f"SSH handshake with {hop.label} failed: {describe_error(exc)}"
                                     ) from exc
            self._check_host_key(hop, transport.get_remote_server_key(), known)
            self._authenticate(transport, hop)
            transport.set_keepalive(self.settings.keepalive_interval)
            return transport
        except BaseException:
            transport.close()
            raise

    def _check_host_key(self, hop: Endpoint, key: paramiko.PKey,
                        known: paramiko.HostKeys) -> None:
        """Refuse unknown or changed host keys; record a new one only when TOFU is asked for."""
        name = hop.host_key_name
        entries = known.lookup(name)
        if entries is not None and entries.get(key.get_name()) == key:
            return
        trust_file = self.settings.trust_file()
        if entries is not None:
            recorded = next(iter(entries.values()))
            raise HostKeyMismatch(
                f"the host key of {name} has CHANGED: the server shows {key.get_name()} "
                f"{key.fingerprint} but known_hosts has {recorded.get_name()} "
                f"{recorded.fingerprint}; refusing to connect (this may be an attack)",
                hint=f"if the host was reinstalled, remove the old key with "
                     f"`ssh-keygen -R '{name}' -f {trust_file}` and connect again",
            )
        if self.settings.trust_on_first_use:
            record_host_key(trust_file, name, key)
            log.warning("trusting new host key of %s (%s %s); recorded in %s", name,
                        key.get_name(), key.fingerprint, trust_file)
            return
        port_option = f"-p {hop.port} " if hop.port != DEFAULT_SSH_PORT else ""
        raise UnknownHostKey(
            f"the host key of {name} is not known ({key.get_name()} {key.fingerprint}); "
            f"refusing to connect",
            hint=f"check the fingerprint, then trust it with `ssh-keyscan {port_option}"
                 f"{hop.hostname} >> {trust_file}` (or log in once with ssh and accept it), "
                 f"or set trust_on_first_use: true",
        )

    def _authenticate(self, transport: paramiko.Transport, hop: Endpoint) -> None:
        """Try the key files, then ssh-agent; fail naming user@host:port and every key tried."""
        tried: list[str] = []
        passphrase = self.settings.passphrase()
        for path in hop.key_files:
            try:
                key = load_private_key(path, passphrase)
            except KeyUnusable as exc:
                tried.append(f"{path} ({exc})")
                continue
            if self._offer_key(transport, hop, key):
                return
            tried.append(f"{path} (refused by the server)")
        if self.settings.use_agent:
            keys, agent, note = agent_keys()
            try:
                for key in keys:
                    if self._offer_key(transport, hop, key):
                        return
            finally:
                if agent is not None:
                    agent.close()
            tried.append(f"ssh-agent ({note}{', all refused' if keys else ''})")
        raise AuthenticationFailed(
            f"{hop.label} refused the login; tried: {'; '.join(tried) or 'no keys at all'}",
            hint="check the user name and that the public key is in ~/.ssh/authorized_keys on "
                 "the host, or set key_file (and key_passphrase for an encrypted key)",
        )

    def _offer_key(self, transport: paramiko.Transport, hop: Endpoint,
                   key: paramiko.PKey) -> bool:
        try:
            transport.auth_publickey(hop.user, key)
        except paramiko.BadAuthenticationType as exc:
            raise AuthenticationFailed(
                f"{hop.label} does not accept SSH keys (it allows: "
                f"{', '.join(exc.allowed_types)})") from None
        except PartialAuthentication as exc:
            raise AuthenticationFailed(
                f"{hop.label} wants a second factor after the key ({', '.join(exc.allowed_types)})"
                f", which cannot be answered here") from None
        except paramiko.AuthenticationException:
            return False
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SSHUnreachable(f"connection to {hop.label} broke during login: "
                                 f"{describe_error(exc)}") from exc
        return transport.is_authenticated()

    def _close_transports(self) -> None:
        for transport in [self._transport, *reversed(self._jump_transports)]:
            if transport is not None:
                transport.close()
        self._transport = None
        self._jump_transports = []

    def _mark_dead(self, transport: paramiko.Transport) -> None:
        """Forget a transport that failed under us, so the next use reconnects."""
        with self._lock:
            if self._transport is transport:
                self._close_transports()

    def _open_channel(self, opener: Callable[[paramiko.Transport], paramiko.Channel],
                      what: str) -> paramiko.Channel:
        """Open a channel, reconnecting once if the transport turns out to be dead."""
        for attempt in (1, 2):
            transport = self._ensure_transport()
            try:
                return opener(transport)
            except paramiko.ChannelException as exc:
                raise SSHUnreachable(f"{self.label} refused to open {what}: {exc.text}") from exc
            except (paramiko.SSHException, EOFError, OSError) as exc:
                # Only a transport that is really gone is torn down: other threads' commands
                # and tunnels still run on a live one (a slow channel open is not a dead link).
                if not transport.is_active():
                    self._mark_dead(transport)
                if attempt == 2:
                    raise SSHUnreachable(f"cannot open {what} on {self.label}: "
                                         f"{describe_error(exc)}") from exc
                log.warning("opening %s on %s failed (%s); trying again", what, self.label,
                            describe_error(exc))
        raise AssertionError("unreachable")

    # -- commands ------------------------------------------------------------------------

    def run(self, argv: Sequence[str | os.PathLike[str]], *, check: bool = True,
            timeout: float | None = DEFAULT_TIMEOUT, stdin: str | bytes | None = None,
            login_shell: bool = False) -> CommandResult:
        """Run one remote command (argv quoted, never shell-interpreted) and collect its output.

        Raises RemoteCommandError on a non-zero exit when `check`, CommandTimeout after
        `timeout` seconds, SSHUnreachable when the connection is lost mid-command.
        """
        command = build_command(argv, login_shell=login_shell)
        # Without stdin the remote shell gives the command EOF from /dev/null; we never send one.
        wire = command if stdin is not None else command + " </dev/null"
        channel = self._open_channel(
            lambda t: t.open_session(timeout=self.settings.connect_timeout), "a session")
        try:
            try:
                channel.exec_command(wire)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise SSHUnreachable(f"{self.label} did not start the command: "
                                     f"{describe_error(exc)}") from exc
            data = stdin.encode() if isinstance(stdin, str) else stdin
            stdout, stderr, timed_out = _exchange(channel, data, timeout)
            if timed_out:
                raise CommandTimeout(command=command, timeout=timeout or 0, stdout=stdout,
                                     stderr=stderr, where=self.label)
            exit_code = self._exit_code(channel, command)
        finally:
            with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
                channel.close()  # on a dropped connection: SSHUnreachable above says so
        result = CommandResult(command, exit_code, stdout, stderr)
        if check and exit_code != 0:
            raise RemoteCommandError(command=command, exit_code=exit_code, stdout=stdout,
                                     stderr=stderr, where=self.label)
        return result

    def _exit_code(self, channel: paramiko.Channel, command: str) -> int:
        """The exit status; -1 when killed by a signal; an error when the connection died."""
        if channel.exit_status_ready() and channel.exit_status != -1:
            return channel.recv_exit_status()
        transport = channel.get_transport()
        if not channel.eof_received or transport is None or not transport.is_active():
            raise SSHUnreachable(
                f"connection to {self.label} was lost while running {shorten(command, 200)}; "
                f"whether it finished is unknown")
        return -1

    # -- files ---------------------------------------------------------------------------

    def _sftp_call(self, operation: Callable[[paramiko.SFTPClient], T], what: str) -> T:
        """Run one SFTP operation, retrying once on a fresh connection if the link broke.

        File errors (missing, permission) pass through as OSError; all operations here are
        idempotent, so the retry is safe.
        """
        for attempt in (1, 2):
            with self._sftp_lock:
                transport = self._ensure_transport()
                try:
                    if self._sftp is None or self._sftp_transport is not transport:
                        self._sftp = paramiko.SFTPClient.from_transport(transport)
                        self._sftp.get_channel().settimeout(self.settings.io_timeout)
                        self._sftp_transport = transport
                    return operation(self._sftp)
                except _CONNECTION_ERRORS as exc:
                    if self._sftp is not None:
                        with contextlib.suppress(Exception):
                            self._sftp.close()
                    self._sftp = None
                    if not transport.is_active():  # else only the SFTP channel is dropped
                        self._mark_dead(transport)
                    if attempt == 2:
                        raise SSHUnreachable(f"SFTP {what} on {self.label} failed: "
                                             f"{describe_error(exc)}") from exc
        raise AssertionError("unreachable")

    def read_file(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of a remote file from `offset` (for following logs); b'' when nothing is new."""

        def read(sftp: paramiko.SFTPClient) -> bytes:
            with sftp.open(path, "rb") as file:
                file.seek(offset)
                if length is not None:
                    return file.read(length)
                file.prefetch()  # pipelined reads: one round trip per chunk is slow for logs
                return file.read()

        return self._sftp_call(read, f"read of {path}")

    def write_file(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        """Write a whole file atomically (temp file + rename) with `mode` set before any data."""
        content = data.encode() if isinstance(data, str) else data
        temp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"

        def write(sftp: paramiko.SFTPClient) -> None:
            try:
                with sftp.open(temp, "wb") as file:
                    file.chmod(mode)
                    file.write(content)
                sftp.posix_rename(temp, path)
            except OSError:
                with contextlib.suppress(OSError):
                    sftp.remove(temp)
                raise

        self._sftp_call(write, f"write of {path}")

    def upload(self, local: Path, path: str, mode: int = 0o600) -> None:
        """Copy a local file to `path` in pipelined chunks (memory stays flat for any size),
        under a temporary name with `mode` set before any data, then renamed."""
        temp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"

        def put(sftp: paramiko.SFTPClient) -> None:
            try:
                with open(local, "rb") as src, sftp.open(temp, "wb") as file:
                    file.chmod(mode)
                    file.set_pipelined(True)
                    while chunk := src.read(1 << 20):
                        file.write(chunk)
                sftp.posix_rename(temp, path)
            except OSError:
                with contextlib.suppress(OSError):
                    sftp.remove(temp)
                raise

        self._sftp_call(put, f"upload of {path}")

    def download(self, path: str, local: Path) -> None:
        """Copy a remote file here (0600), in pipelined chunks, under a temporary name."""
        temp = local.with_name(f".{local.name}.part")

        def get(sftp: paramiko.SFTPClient) -> None:
            with sftp.open(path, "rb") as file:
                file.prefetch()
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while chunk := file.read(1 << 20):
                        out.write(chunk)
            os.replace(temp, local)

        self._sftp_call(get, f"download of {path}")

    def stat(self, path: str) -> FileStat:
        """Size, mode and mtime of a remote path; FileNotFoundError when it does not exist."""
        attrs = self._sftp_call(lambda sftp: sftp.stat(path), f"stat of {path}")
        return FileStat(size=attrs.st_size or 0, mode=attrs.st_mode or 0,
                        mtime=float(attrs.st_mtime or 0))

    def home(self) -> str:
        """The remote home directory (where relative paths point)."""
        return self._sftp_call(lambda sftp: sftp.normalize("."), "normalize")

    # -- tunnels -------------------------------------------------------------------------

    def open_tunnel(self, remote_host: str, remote_port: int) -> tuple[str, int]:
        """Forward a port on 127.0.0.1 to remote_host:remote_port as seen from the cluster.

        The local port stays the same across reconnects; opening the same target twice
        returns the same local address.
        """
        self._ensure_transport()
        key = (remote_host, int(remote_port))
        with self._lock:
            tunnel = self._tunnels.get(key)
            if tunnel is None or tunnel.closed:
                tunnel = Tunnel(self._forward, remote_host, int(remote_port))
                self._tunnels[key] = tunnel
            return tunnel.local_address

    def close_tunnel(self, remote_host: str, remote_port: int) -> None:
        with self._lock:
            tunnel = self._tunnels.pop((remote_host, int(remote_port)), None)
        if tunnel is not None:
            tunnel.close()

    def _forward(self, remote_host: str, remote_port: int,
                 origin: tuple[str, int]) -> paramiko.Channel:
        """What tunnels call: looked up per call, so a wrapped `_open_forward_channel` counts."""
        return self._open_forward_channel(remote_host, remote_port, origin)

    def _open_forward_channel(self, remote_host: str, remote_port: int,
                              origin: tuple[str, int]) -> paramiko.Channel:
        return self._open_channel(
            lambda t: t.open_channel("direct-tcpip", (remote_host, remote_port), origin,
                                     timeout=self.settings.connect_timeout),
            f"a forward to {remote_host}:{remote_port}")

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Close tunnels, SFTP and the connection (and jump hosts). Further use raises."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            tunnels = list(self._tunnels.values())
            self._tunnels.clear()
        for tunnel in tunnels:
            tunnel.close()
        with self._sftp_lock:
            if self._sftp is not None:
                with contextlib.suppress(Exception):
                    self._sftp.close()
                self._sftp = None
        with self._lock:
            self._close_transports()
        if self._on_close is not None:
            self._on_close(self)


def _exchange(channel: paramiko.Channel, stdin: bytes | None, timeout: float | None
              ) -> tuple[str, str, bool]:
    """Feed stdin and drain stdout and stderr concurrently, so neither side can block the other.

    Returns (stdout, stderr, timed_out).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    stop = threading.Event()
    out: list[bytes] = []
    err: list[bytes] = []
    channel.settimeout(_POLL)

    def expired() -> bool:
        return stop.is_set() or (deadline is not None and time.monotonic() > deadline)

    def drain(receive: Callable[[int], bytes], into: list[bytes]) -> None:
        while True:
            try:
                chunk = receive(_BUFFER)
            except TimeoutError:
                if expired():
                    return
                continue
            except (OSError, paramiko.SSHException, EOFError):
                return
            if not chunk:
                return
            into.append(chunk)

    def feed() -> None:
        # send() in a loop, not sendall(): the short poll timeout must not cut stdin short
        view = memoryview(stdin or b"")
        with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
            while view and not expired():
                try:
                    sent = channel.send(bytes(view[:_BUFFER]))
                except TimeoutError:
                    continue
                if not sent:
                    return  # the channel closed: the command is gone
                view = view[sent:]
            channel.shutdown_write()

    helpers = [threading.Thread(target=drain, args=(channel.recv_stderr, err), daemon=True)]
    if stdin is not None:
        # Without stdin the command reads /dev/null (see run): no EOF is sent at all, because
        # an EOF that crosses the server's channel close makes sshd drop the whole connection
        # ("ieof packet referred to nonexistent channel"), with every command running on it.
        helpers.append(threading.Thread(target=feed, daemon=True))
    for helper in helpers:
        helper.start()
    drain(channel.recv, out)
    # stdout can close before the process exits (e.g. `exec >&-`): wait for the exit status too;
    # a channel cut by a lost connection also sets the status event, so it is no timeout
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    timed_out = not channel.status_event.wait(remaining)
    if timed_out:
        stop.set()
        channel.close()
    for helper in helpers:
        helper.join(None if deadline is None else max(0.5, deadline - time.monotonic()))
    decode = lambda chunks: b"".join(chunks).decode("utf-8", errors="replace")  # noqa: E731
    return decode(out), decode(err), timed_out
