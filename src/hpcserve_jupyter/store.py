"""SQLite persistence of sessions and their event log (WAL; one transaction per change).

Every update is a compare-and-set on the session's version, so two managers sharing a state
directory never apply the same transition twice and a crash never leaves half a record.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .sessions import TERMINAL, Session

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    target TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    activity REAL NOT NULL DEFAULT 0,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_state ON sessions(state);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    state TEXT,
    message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_session ON events(session_id, seq);
"""


_COLS = "data, activity"


def _like_prefix(text: str) -> str:
    """A LIKE pattern (with ESCAPE '\\') matching values that start with `text` literally:
    '%' and '_' in a user's key are characters, not wildcards."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _session(row: tuple[str, float]) -> Session:
    session = Session.from_dict(json.loads(row[0]))
    session.last_activity = max(session.last_activity, row[1])
    return session


class StaleSession(Exception):
    """Another writer changed the session first; reload and decide again."""


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = not path.exists()
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=10,
                                   isolation_level=None)
        if fresh:
            os.chmod(path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # Shared with the other records kept in this database (jobstore.py).

    def tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        return self._tx()

    def script(self, sql: str) -> None:
        with self._lock:
            self._db.executescript(sql)

    def query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def event(self, db: sqlite3.Connection, subject_id: str, state: str, kind: str,
              message: str) -> None:
        """Append to the event log inside the caller's transaction (a session's or job's)."""
        db.execute("INSERT INTO events(session_id, ts, kind, state, message) VALUES (?,?,?,?,?)",
                   (subject_id, time.time(), kind, state, message))

    # ------------------------------------------------------------------ sessions

    def insert(self, session: Session, event: str = "created", message: str = "") -> None:
        with self._tx() as db:
            db.execute("INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?)",
                       (session.id, session.name, str(session.state), session.target,
                        session.version, session.created_at, session.last_activity,
                        json.dumps(session.to_dict())))
            self._event(db, session, event, message)

    def update(self, session: Session, event: str | None = None, message: str = "") -> None:
        """Write `session` if nobody changed it since it was read; bumps its version."""
        with self._tx() as db:
            new_version = session.version + 1
            data = session.to_dict()
            data["version"] = new_version
            cur = db.execute(
                "UPDATE sessions SET name=?, state=?, version=?, data=?, "
                "activity=MAX(activity, ?) WHERE id=? AND version=?",
                (session.name, str(session.state), new_version, json.dumps(data),
                 session.last_activity, session.id, session.version))
            if cur.rowcount != 1:
                raise StaleSession(session.id)
            if event:
                self._event(db, session, event, message)
        session.version = new_version

    def get(self, session_id: str) -> Session | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLS} FROM sessions WHERE id=?",
                                   (session_id,)).fetchone()
        return _session(row) if row else None

    def all(self, *, live_only: bool = False) -> list[Session]:
        query = f"SELECT {_COLS} FROM sessions"
        if live_only:
            query += " WHERE state NOT IN ({})".format(",".join("?" * len(TERMINAL)))
        query += " ORDER BY created_at"
        with self._lock:
            args = [str(s) for s in TERMINAL] if live_only else []
            rows = self._db.execute(query, args).fetchall()
        return [_session(r) for r in rows]

    def find(self, key: str) -> list[Session]:
        """Sessions whose id, id prefix or name is `key` (live ones first)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLS} FROM sessions WHERE id=? OR name=? OR id LIKE ? ESCAPE '\\' "
                "ORDER BY created_at", (key, key, _like_prefix(key))).fetchall()
        found = [_session(r) for r in rows]
        exact = [s for s in found if key in (s.id, s.name)]
        found = exact or found
        return sorted(found, key=lambda s: (s.state.terminal, -s.created_at))

    def name_in_use(self, name: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM sessions WHERE name=? AND state NOT IN ({}) LIMIT 1".format(
                    ",".join("?" * len(TERMINAL))), (name, *[str(s) for s in TERMINAL])).fetchone()
        return row is not None

    def names_like(self, prefix: str) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT name FROM sessions WHERE name LIKE ? ESCAPE '\\'",
                                    (_like_prefix(prefix),)).fetchall()
        return [r[0] for r in rows]

    def touch(self, session_id: str, when: float | None = None) -> None:
        """Record activity (prompts, keepalive, proxied traffic); it only ever moves forward."""
        with self._tx() as db:
            db.execute("UPDATE sessions SET activity=MAX(activity, ?) WHERE id=?",
                       (when or time.time(), session_id))

    # ------------------------------------------------------------------ events

    def _event(self, db: sqlite3.Connection, session: Session, kind: str, message: str) -> None:
        self.event(db, session.id, str(session.state), kind, message)

    def add_event(self, session: Session, kind: str, message: str = "") -> None:
        with self._tx() as db:
            self._event(db, session, kind, message)

    def last_seq(self) -> int:
        """The sequence number of the newest event (0 when there is none)."""
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def events(self, session_id: str | None = None, after: int = 0,
               limit: int = 1000) -> list[dict[str, Any]]:
        query = "SELECT seq, session_id, ts, kind, state, message FROM events WHERE seq > ?"
        args: list[Any] = [after]
        if session_id:
            query += " AND session_id = ?"
            args.append(session_id)
        query += " ORDER BY seq LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        keys = ("seq", "session_id", "ts", "kind", "state", "message")
        return [dict(zip(keys, r, strict=True)) for r in rows]

