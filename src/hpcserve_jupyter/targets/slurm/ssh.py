"""SSH to a cluster's login node: one shared connection per cluster for commands, files and tunnels.

Why one connection: clusters rate-limit logins (and some ask for a second factor), so every
command, SFTP call and port forward of a cluster goes over the same `SSHConnection`, which
reconnects with backoff when the network drops it.

Why one `run()`: every remote command is built from an argv list by `build_command`, which
quotes each argument with `shlex.join`, so a model name or path can never inject shell code.
Secrets (key passphrases) are held in `Secret` and never reach messages, logs or reprs; pass
other secrets to remote commands on stdin, not in argv.

`LocalShell` has the same interface for `host: local` (SLURM commands on this machine).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import shlex
import socket
import stat as stat_module
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import paramiko
from paramiko.ssh_exception import PartialAuthentication

from hpcserve_jupyter.errors import BadInput, HpcserveError, TargetUnreachable

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT = 120.0
DEFAULT_SSH_PORT = 22
DEFAULT_KEY_NAMES = ("id_ed25519", "id_ecdsa", "id_rsa")
USER_SSH_CONFIG = "~/.ssh/config"
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"
_BUFFER = 64 * 1024
_POLL = 0.25
_IDLE_CHECK = 1.0  # seconds between liveness checks of an idle tunnelled connection
_MAX_JUMP_DEPTH = 5
# Errors that mean "the SSH connection is gone", as opposed to a remote file or command error.
_CONNECTION_ERRORS = (paramiko.SSHException, EOFError, ConnectionError, TimeoutError)


# --- secrets and errors ---------------------------------------------------------------------


class Secret:
    """A string that never shows itself: repr and str are masked, so it cannot leak by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value; call only where it is handed to the library that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))


class SSHUnreachable(TargetUnreachable):
    """The SSH host did not answer or the connection broke; the remote state is unknown."""


class HostKeyError(BadInput):
    """The host's key is not trusted; the user has to check and record it."""


class UnknownHostKey(HostKeyError):
    """The host key is in no known_hosts file (and trust_on_first_use is off)."""


class HostKeyMismatch(HostKeyError):
    """The host key differs from the recorded one: possibly an attack, possibly a reinstall."""


class AuthenticationFailed(BadInput):
    """The server refused every key we had; says which user, host and keys were tried."""


class RemoteCommandError(HpcserveError):
    """A remote command exited non-zero; carries everything needed to explain why."""

    def __init__(self, *, command: str, exit_code: int, stdout: str, stderr: str,
                 where: str) -> None:
        self.command = command
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.where = where
        detail = (stderr.strip() or stdout.strip())[-2000:]
        message = f"command failed on {where} with exit code {exit_code}: {_shorten(command)}"
        super().__init__(f"{message}\n{detail}" if detail else message)


class CommandTimeout(TargetUnreachable):
    """A remote command did not finish in time; it may still be running there."""

    def __init__(self, *, command: str, timeout: float, stdout: str, stderr: str,
                 where: str) -> None:
        self.command = command
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"command on {where} did not finish in {timeout:g} s: "
                         f"{_shorten(command)}")


def _shorten(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(exc: BaseException) -> str:
    """A one-line reason for a low-level error (some paramiko errors have empty messages)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    """What a command printed and how it exited."""

    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class FileStat:
    """The few file facts log following and job files need."""

    size: int
    mode: int
    mtime: float

    @property
    def is_dir(self) -> bool:
        return stat_module.S_ISDIR(self.mode)


def build_command(argv: Sequence[str | os.PathLike[str]], *, login_shell: bool = False) -> str:
    """The one place an argv becomes a shell string: every argument is quoted, none interpreted.

    With `login_shell` the command runs under `bash -lc` so /etc/profile (and `module`) is set up.
    """
    args = [os.fspath(arg) for arg in argv]
    if not args:
        raise BadInput("empty command: run() needs at least the program name")
    if not all(isinstance(arg, str) for arg in args):
        raise TypeError("command arguments must be str or str paths")
    for i, arg in enumerate(args):
        if "\0" in arg:  # the remote shell gets a C string: it would end there
            raise BadInput(f"argument {i} of {args[0][:40]!r} contains a NUL byte, which no "
                           "command line can carry")
    command = shlex.join(args)
    return shlex.join(["bash", "-lc", command]) if login_shell else command


# --- settings and ~/.ssh/config -------------------------------------------------------------


@dataclass(frozen=True)
class SSHSettings:
    """How to reach one cluster. Unset fields come from ~/.ssh/config, then OpenSSH defaults."""

    host: str
    port: int | None = None
    user: str | None = None
    key_file: str | None = None
    key_passphrase: Secret | str | None = field(default=None, repr=False)
    key_passphrase_file: str | None = None
    use_agent: bool = True
    proxy_jump: str | None = None
    known_hosts_file: str | None = None
    trust_on_first_use: bool = False
    ssh_config_file: str | None = USER_SSH_CONFIG
    user_known_hosts_file: str | None = USER_KNOWN_HOSTS
    connect_timeout: float = 15.0
    io_timeout: float = 60.0
    keepalive_interval: int = 15
    reconnect_attempts: int = 4
    reconnect_backoff: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.key_passphrase, str):
            object.__setattr__(self, "key_passphrase", Secret(self.key_passphrase))
        if not self.host or self.host == "local":
            raise BadInput(f"SSH host must be a host name, got {self.host!r}",
                           hint="use LocalShell (host: local) for this machine")

    def passphrase(self) -> Secret | None:
        """The key passphrase, from the setting or read from key_passphrase_file."""
        if isinstance(self.key_passphrase, Secret):
            return self.key_passphrase
        if self.key_passphrase_file:
            path = Path(self.key_passphrase_file).expanduser()
            try:
                return Secret(path.read_text().rstrip("\r\n"))
            except OSError as exc:
                raise BadInput(f"cannot read key_passphrase_file {path}: {exc.strerror}") from exc
        return None

    def trust_file(self) -> Path:
        """The known_hosts file that trust_on_first_use writes and the hints point to."""
        return Path(self.known_hosts_file or self.user_known_hosts_file or USER_KNOWN_HOSTS
                    ).expanduser()


@dataclass(frozen=True)
class Endpoint:
    """One SSH server to log in to, fully resolved (a jump host or the cluster itself)."""

    alias: str
    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...]
    proxy_jump: str | None = None
    host_key_alias: str | None = None

    @property
    def label(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    @property
    def host_key_name(self) -> str:
        """The name known_hosts files use: `host`, or `[host]:port` off port 22."""
        host = self.host_key_alias or self.hostname
        return host if self.port == DEFAULT_SSH_PORT else f"[{host}]:{self.port}"


def load_ssh_config(path: str | None) -> paramiko.SSHConfig:
    """The user's ssh config, or an empty one when there is none (or it is switched off)."""
    if not path:
        return paramiko.SSHConfig()
    config_path = Path(path).expanduser()
    if not config_path.is_file():
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(config_path))
    except (paramiko.SSHException, OSError) as exc:
        raise BadInput(f"cannot parse SSH config {config_path}: {_describe(exc)}") from exc


def _default_key_files() -> list[str]:
    ssh_dir = Path("~/.ssh").expanduser()
    return [str(ssh_dir / name) for name in DEFAULT_KEY_NAMES if (ssh_dir / name).is_file()]


def _parse_port(value: object, where: str) -> int:
    try:
        port = int(str(value))
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise BadInput(f"bad SSH port {value!r} in {where}")
    return port


def resolve_endpoint(alias: str, config: paramiko.SSHConfig, *, user: str | None = None,
                     port: int | None = None, key_file: str | None = None,
                     proxy_jump: str | None = None, extra_key: str | None = None) -> Endpoint:
    """Explicit settings win over the `Host` block of ~/.ssh/config, which wins over defaults.

    An explicit key_file is the only key file tried; otherwise the config's IdentityFiles, then
    `extra_key` (a jump host may take the cluster's key), then ~/.ssh/id_*.
    """
    options = config.lookup(alias)
    if key_file:
        key_files = [str(Path(key_file).expanduser())]
    else:
        from_config = [str(Path(p).expanduser()) for p in options.get("identityfile", [])]
        candidates = [p for p in from_config if Path(p).is_file()]
        candidates += [extra_key] if extra_key else []
        key_files = list(dict.fromkeys(candidates + _default_key_files()))
    jump = proxy_jump if proxy_jump is not None else options.get("proxyjump")
    if jump is not None and jump.strip().lower() in ("", "none"):
        jump = None
    return Endpoint(
        alias=alias,
        hostname=options.get("hostname", alias),
        port=port or _parse_port(options.get("port", DEFAULT_SSH_PORT), f"ssh config for {alias}"),
        user=user or options.get("user") or getpass.getuser(),
        key_files=tuple(key_files),
        proxy_jump=jump,
        host_key_alias=options.get("hostkeyalias"),
    )


def parse_jump_spec(spec: str) -> tuple[str | None, str, int | None]:
    """`[ssh://][user@]host[:port]` (IPv6 in brackets) -> (user, host, port)."""
    text = spec.strip().removeprefix("ssh://")
    user = None
    if "@" in text:
        user, text = text.rsplit("@", 1)
    port: str | None = None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host = text
    if not host:
        raise BadInput(f"bad ProxyJump entry {spec!r}", hint="use [user@]host[:port]")
    return user or None, host, _parse_port(port, f"ProxyJump {spec!r}") if port else None


def resolve_jump_chain(spec: str | None, config: paramiko.SSHConfig, *,
                       fallback_key: str | None, depth: int = 0) -> list[Endpoint]:
    """The jump hosts, in connection order. Like OpenSSH, the first hop's own ProxyJump applies."""
    if not spec:
        return []
    if depth >= _MAX_JUMP_DEPTH:
        raise BadInput(f"ProxyJump nests more than {_MAX_JUMP_DEPTH} deep (a loop in ssh config?)",
                       hint="exclude the jump host from `Host *` blocks that set ProxyJump")
    chain: list[Endpoint] = []
    for index, part in enumerate(p for p in spec.split(",") if p.strip()):
        user, host, port = parse_jump_spec(part)
        hop = resolve_endpoint(host, config, user=user, port=port, extra_key=fallback_key)
        if index == 0 and hop.proxy_jump:
            chain.extend(resolve_jump_chain(hop.proxy_jump, config, fallback_key=fallback_key,
                                            depth=depth + 1))
        chain.append(hop)
    return chain


# --- host keys --------------------------------------------------------------------------------


def load_known_hosts(paths: Sequence[str | Path | None]) -> paramiko.HostKeys:
    """All known keys from the given files that exist (read each connect, so edits count)."""
    keys = paramiko.HostKeys()
    for path in paths:
        if not path:
            continue
        file = Path(path).expanduser()
        if file.is_file():
            try:
                keys.load(str(file))
            except (OSError, paramiko.SSHException) as exc:
                log.warning("skipping unreadable known_hosts file %s: %s", file, _describe(exc))
    return keys


def record_host_key(path: Path, name: str, key: paramiko.PKey) -> None:
    """Append one `name type base64` line, creating ~/.ssh-like directories private."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with path.open("a") as file:
        file.write(f"{name} {key.get_name()} {key.get_base64()}\n")


def _prefer_known_key_types(transport: paramiko.Transport,
                            known: Mapping[str, paramiko.PKey] | None) -> None:
    """Ask the server for a key type we already know, so a known host is not seen as new."""
    if not known:
        return
    wanted: list[str] = []
    for key_type in known:
        rsa = key_type == "ssh-rsa"
        wanted += ["rsa-sha2-512", "rsa-sha2-256", key_type] if rsa else [key_type]
    options = transport.get_security_options()
    available = list(options.key_types)
    first = [t for t in wanted if t in available]
    options.key_types = first + [t for t in available if t not in first]


# --- private keys -----------------------------------------------------------------------------


class _KeyUnusable(Exception):
    """A key file we could not use; the reason goes into the 'tried' list of the auth error."""


def load_private_key(path: str, passphrase: Secret | None) -> paramiko.PKey:
    """Load a key file, telling 'encrypted, no passphrase' from 'wrong passphrase'."""
    secret = passphrase.reveal().encode() if passphrase else None
    try:
        return paramiko.PKey.from_path(path, secret)
    except FileNotFoundError:
        raise _KeyUnusable("does not exist") from None
    except OSError as exc:
        raise _KeyUnusable(f"cannot be read: {exc.strerror}") from None
    except TypeError as exc:
        text = str(exc).lower()
        if "not encrypted" in text and secret is not None:
            return load_private_key(path, None)
        if "password" in text:
            raise _KeyUnusable("is encrypted and no passphrase was given") from None
        raise _KeyUnusable(f"cannot be loaded ({type(exc).__name__})") from None
    except (ValueError, paramiko.SSHException) as exc:
        if secret is not None and _is_encrypted(path):
            raise _KeyUnusable("cannot be decrypted: wrong passphrase?") from None
        raise _KeyUnusable(f"is not a private key paramiko can read ({type(exc).__name__})"
                           ) from None


def _is_encrypted(path: str) -> bool:
    try:
        paramiko.PKey.from_path(path, None)
    except TypeError as exc:
        return "password" in str(exc).lower()
    except Exception:
        return False
    return False


def _agent_keys() -> tuple[list[paramiko.AgentKey], paramiko.Agent | None, str]:
    """Keys offered by ssh-agent, the agent (to close later) and a note for error messages."""
    if not os.environ.get("SSH_AUTH_SOCK"):
        return [], None, "no agent: SSH_AUTH_SOCK is not set"
    try:
        agent = paramiko.Agent()
        keys = list(agent.get_keys())
    except (paramiko.SSHException, OSError) as exc:
        return [], None, f"agent not usable: {_describe(exc)}"
    return keys, agent, f"{len(keys)} key(s)"


# --- the connection ---------------------------------------------------------------------------


class SSHConnection:
    """One SSH connection to a cluster, shared by all commands, SFTP calls and tunnels.

    Thread-safe. Connects lazily; when the connection has dropped, the next use reconnects with
    exponential backoff. A command is never re-run: only the opening of a channel is retried.
    """

    def __init__(self, settings: SSHSettings) -> None:
        self.settings = settings
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
        self._tunnels: dict[tuple[str, int], _Tunnel] = {}
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
                f"cannot connect to {hop.hostname}:{hop.port}{through}: {_describe(exc)}",
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
            _prefer_known_key_types(transport, known.lookup(hop.host_key_name))
            try:
                transport.start_client(timeout=timeout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise SSHUnreachable(f"SSH handshake with {hop.label} failed: {_describe(exc)}"
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
            except _KeyUnusable as exc:
                tried.append(f"{path} ({exc})")
                continue
            if self._offer_key(transport, hop, key):
                return
            tried.append(f"{path} (refused by the server)")
        if self.settings.use_agent:
            keys, agent, note = _agent_keys()
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
                                 f"{_describe(exc)}") from exc
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
                                         f"{_describe(exc)}") from exc
                log.warning("opening %s on %s failed (%s); trying again", what, self.label,
                            _describe(exc))
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
                                     f"{_describe(exc)}") from exc
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
                f"connection to {self.label} was lost while running {_shorten(command, 200)}; "
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
                                             f"{_describe(exc)}") from exc
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
                tunnel = _Tunnel(self, remote_host, int(remote_port))
                self._tunnels[key] = tunnel
            return tunnel.local_address

    def close_tunnel(self, remote_host: str, remote_port: int) -> None:
        with self._lock:
            tunnel = self._tunnels.pop((remote_host, int(remote_port)), None)
        if tunnel is not None:
            tunnel.close()

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
        _forget_shared(self)


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


# --- tunnels ----------------------------------------------------------------------------------


class _Tunnel:
    """A listening port on 127.0.0.1; each accepted connection gets its own direct-tcpip channel.

    Channels are opened on the connection's current transport, so after a reconnect new
    connections simply work again on the same local port.
    """

    def __init__(self, connection: SSHConnection, remote_host: str, remote_port: int) -> None:
        self._connection = connection
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
            channel = self._connection._open_forward_channel(*self.remote, peer[:2])
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
    closing the socket and channel (see _Tunnel.close), which ends both blocking calls.
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


# --- the local shell --------------------------------------------------------------------------


class LocalShell:
    """`host: local`: the same interface as SSHConnection, run on this machine with subprocess.

    Relative paths and commands start in `cwd` (the home directory by default), like over SSH.
    """

    label = "local"

    def __init__(self, cwd: str | Path | None = None) -> None:
        self.cwd = Path(cwd).expanduser() if cwd else Path.home()

    def __repr__(self) -> str:
        return f"<LocalShell {self.cwd}>"

    def __enter__(self) -> LocalShell:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connect(self) -> None:
        """Nothing to connect; here so callers need not tell the two shells apart."""

    def run(self, argv: Sequence[str | os.PathLike[str]], *, check: bool = True,
            timeout: float | None = DEFAULT_TIMEOUT, stdin: str | bytes | None = None,
            login_shell: bool = False) -> CommandResult:
        """Run a command without any shell (argv as is), or under `bash -lc` when asked."""
        command = build_command(argv, login_shell=login_shell)
        args = ["bash", "-lc", build_command(argv)] if login_shell else [os.fspath(a) for a in argv]
        data = stdin.encode() if isinstance(stdin, str) else stdin
        try:
            done = subprocess.run(args, input=data if data is not None else b"",
                                  capture_output=True, timeout=timeout, cwd=self.cwd, check=False)
        except FileNotFoundError:
            # what a remote shell would say, so both shells report a missing program alike
            done = subprocess.CompletedProcess(args, 127, b"",
                                               f"{args[0]}: command not found\n".encode())
        except subprocess.TimeoutExpired as exc:
            raise CommandTimeout(command=command, timeout=timeout or 0,
                                 stdout=_text(exc.stdout), stderr=_text(exc.stderr),
                                 where=self.label) from None
        result = CommandResult(command, done.returncode, _text(done.stdout), _text(done.stderr))
        if check and done.returncode != 0:
            raise RemoteCommandError(command=command, exit_code=done.returncode,
                                     stdout=result.stdout, stderr=result.stderr, where=self.label)
        return result

    def _path(self, path: str) -> Path:
        return self.cwd / path

    def read_file(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._path(path).open("rb") as file:
            file.seek(offset)
            return file.read(length) if length is not None else file.read()

    def write_file(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        target = self._path(path)
        temp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        content = data.encode() if isinstance(data, str) else data
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)  # the umask must not widen or narrow what was asked for
            with os.fdopen(fd, "wb") as file:
                file.write(content)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise

    def stat(self, path: str) -> FileStat:
        info = self._path(path).stat()
        return FileStat(size=info.st_size, mode=info.st_mode, mtime=info.st_mtime)

    def home(self) -> str:
        return str(self.cwd)

    def open_tunnel(self, remote_host: str, remote_port: int) -> tuple[str, int]:
        """Nothing to forward: the service is already reachable from here."""
        return remote_host, int(remote_port)

    def close_tunnel(self, remote_host: str, remote_port: int) -> None:
        """Nothing to close (see open_tunnel)."""

    def close(self) -> None:
        """Nothing to close; kept for interface parity with SSHConnection."""


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", errors="replace")


# --- choosing and sharing shells --------------------------------------------------------------


class Shell(Protocol):
    """What the SLURM target needs from a login node, over SSH or on this machine."""

    @property
    def label(self) -> str: ...

    def connect(self) -> None: ...

    def run(self, argv: Sequence[str | os.PathLike[str]], *, check: bool = True,
            timeout: float | None = DEFAULT_TIMEOUT, stdin: str | bytes | None = None,
            login_shell: bool = False) -> CommandResult: ...

    def read_file(self, path: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def write_file(self, path: str, data: str | bytes, mode: int = 0o644) -> None: ...

    def stat(self, path: str) -> FileStat: ...

    def home(self) -> str: ...

    def open_tunnel(self, remote_host: str, remote_port: int) -> tuple[str, int]: ...

    def close_tunnel(self, remote_host: str, remote_port: int) -> None: ...

    def close(self) -> None: ...


_shared: dict[SSHSettings, SSHConnection] = {}
_shared_lock = threading.Lock()


def shared_connection(settings: SSHSettings) -> SSHConnection:
    """The process-wide connection for these settings, so a cluster is logged in to once."""
    with _shared_lock:
        connection = _shared.get(settings)
        if connection is None:
            connection = SSHConnection(settings)
            _shared[settings] = connection
        return connection


def _forget_shared(connection: SSHConnection) -> None:
    with _shared_lock:
        if _shared.get(connection.settings) is connection:
            del _shared[connection.settings]


def open_shell(host: str, **options: object) -> Shell:
    """`host: local` -> LocalShell; anything else -> the shared SSHConnection for it."""
    if host == "local":
        return LocalShell()
    return shared_connection(SSHSettings(host=host, **options))  # type: ignore[arg-type]
