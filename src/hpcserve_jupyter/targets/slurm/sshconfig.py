"""How to reach a cluster over SSH: settings, ~/.ssh/config and ProxyJump resolution, host keys
and private keys, the way OpenSSH would resolve them (explicit settings win over the `Host`
block, which wins over the defaults), so a cluster that works with `ssh alias` works here.
"""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from hpcserve_jupyter.errors import BadInput

from .shell import Secret, describe_error

log = logging.getLogger(__name__)

DEFAULT_SSH_PORT = 22
DEFAULT_KEY_NAMES = ("id_ed25519", "id_ecdsa", "id_rsa")
USER_SSH_CONFIG = "~/.ssh/config"
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"
_MAX_JUMP_DEPTH = 5


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
        raise BadInput(f"cannot parse SSH config {config_path}: {describe_error(exc)}") from exc


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
                log.warning("skipping unreadable known_hosts file %s: %s", file,
                            describe_error(exc))
    return keys


def record_host_key(path: Path, name: str, key: paramiko.PKey) -> None:
    """Append one `name type base64` line, creating ~/.ssh-like directories private."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with path.open("a") as file:
        file.write(f"{name} {key.get_name()} {key.get_base64()}\n")


def prefer_known_key_types(transport: paramiko.Transport,
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


class KeyUnusable(Exception):
    """A key file we could not use; the reason goes into the 'tried' list of the auth error."""


def load_private_key(path: str, passphrase: Secret | None) -> paramiko.PKey:
    """Load a key file, telling 'encrypted, no passphrase' from 'wrong passphrase'."""
    secret = passphrase.reveal().encode() if passphrase else None
    try:
        return paramiko.PKey.from_path(path, secret)
    except FileNotFoundError:
        raise KeyUnusable("does not exist") from None
    except OSError as exc:
        raise KeyUnusable(f"cannot be read: {exc.strerror}") from None
    except TypeError as exc:
        text = str(exc).lower()
        if "not encrypted" in text and secret is not None:
            return load_private_key(path, None)
        if "password" in text:
            raise KeyUnusable("is encrypted and no passphrase was given") from None
        raise KeyUnusable(f"cannot be loaded ({type(exc).__name__})") from None
    except (ValueError, paramiko.SSHException) as exc:
        if secret is not None and _is_encrypted(path):
            raise KeyUnusable("cannot be decrypted: wrong passphrase?") from None
        raise KeyUnusable(f"is not a private key paramiko can read ({type(exc).__name__})"
                           ) from None


def _is_encrypted(path: str) -> bool:
    try:
        paramiko.PKey.from_path(path, None)
    except TypeError as exc:
        return "password" in str(exc).lower()
    except Exception:
        return False
    return False


def agent_keys() -> tuple[list[paramiko.AgentKey], paramiko.Agent | None, str]:
    """Keys offered by ssh-agent, the agent (to close later) and a note for error messages."""
    if not os.environ.get("SSH_AUTH_SOCK"):
        return [], None, "no agent: SSH_AUTH_SOCK is not set"
    try:
        agent = paramiko.Agent()
        keys = list(agent.get_keys())
    except (paramiko.SSHException, OSError) as exc:
        return [], None, f"agent not usable: {describe_error(exc)}"
    return keys, agent, f"{len(keys)} key(s)"
