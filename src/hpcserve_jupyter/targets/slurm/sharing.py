"""Choosing and sharing shells: `host: local` runs here, any other host over the one
process-wide SSH connection for its settings, so a cluster is logged in to once however many
targets (and front ends) use it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence

from .connection import SSHConnection
from .shell import LocalShell, Shell
from .sshconfig import SSHSettings

_shared: dict[SSHSettings, SSHConnection] = {}
_shared_lock = threading.Lock()


def shared_connection(settings: SSHSettings) -> SSHConnection:
    """The process-wide connection for these settings, so a cluster is logged in to once."""
    with _shared_lock:
        connection = _shared.get(settings)
        if connection is None:
            connection = SSHConnection(settings, on_close=_forget_shared)
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


def endpoint_urls(node: str, ports: Sequence[int], shell: Callable[[], Shell] | None) -> list[str]:
    """Base URLs of a job's engines on `node`: directly (`shell` None: hpcserve runs where the
    node is reachable), else the local ends of tunnels through the login host's connection."""
    if shell is None:
        return [f"http://{node}:{int(p)}" for p in ports]
    urls = []
    for port in ports:
        host, local_port = shell().open_tunnel(node, int(port))
        urls.append(f"http://{host}:{local_port}")
    return urls


def close_endpoint_tunnels(node: str, ports: Sequence[int], shell: Shell | None) -> None:
    """Close the tunnels `endpoint_urls` opened (an ended job's; best effort)."""
    if shell is None:
        return
    for port in ports:
        with contextlib.suppress(Exception):
            shell.close_tunnel(node, int(port))
