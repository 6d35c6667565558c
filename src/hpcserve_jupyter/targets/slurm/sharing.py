"""Choosing and sharing shells: `host: local` runs here, any other host over the one
process-wide SSH connection for its settings, so a cluster is logged in to once however many
targets (and front ends) use it.
"""

from __future__ import annotations

import threading

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
