"""Session lookups for the proxy's and the gateway's hot path, cached until the sessions
database changes.

Why: `SessionManager.get` reads and parses a session from SQLite on every request, about
0.2 ms of the proxy's overhead (issue 14). The cache asks SQLite's `PRAGMA data_version`, on a
connection of its own, whether any other connection (this server's manager, the CLI, a
notebook, another server) committed anything since the last lookup (a few microseconds) and
forgets everything if so. Errors (unknown or ambiguous names) are never cached.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..manager import SessionManager
    from ..sessions import Session


class SessionLookup:
    """`get(key)` and `live()` as the manager answers them, cached per database version."""

    def __init__(self, manager: SessionManager) -> None:
        self._manager = manager
        self._db = sqlite3.connect(manager.store.path, check_same_thread=False,
                                   isolation_level=None)
        self._version: int | None = None
        self._by_key: dict[str, Session] = {}
        self._live: list[Session] | None = None

    def _check(self) -> SessionManager:
        manager = self._manager
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._version = version
            self._by_key.clear()
            self._live = None
        return manager

    def get(self, key: str) -> Session:
        """The session `key` names (id, id prefix or name); raises as `SessionManager.get`."""
        manager = self._check()
        session = self._by_key.get(key)
        if session is None:
            session = manager.get(key)
            if len(self._by_key) > 1024:
                self._by_key.clear()
            self._by_key[key] = session
        return session

    def live(self) -> list[Session]:
        """`SessionManager.sessions(live_only=True)`; the list is shared: do not change it."""
        manager = self._check()
        if self._live is None:
            self._live = manager.sessions(live_only=True)
        return self._live

    def close(self) -> None:
        self._db.close()
