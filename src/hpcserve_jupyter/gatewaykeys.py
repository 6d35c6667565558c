"""Gateway keys: bearer tokens the OpenAI-compatible gateway (/hpcserve/v1) accepts, and
nothing else does. Tools that keep their key in clear text (jupyter-ai shows it to the browser
and prints it in its log) get one of these instead of the Jupyter token, which runs code.

A key is `hsk_` + 43 random URL-safe characters (256 bits). Only its SHA-256 is stored (a
salt or a slow hash adds nothing for a random key of this size), in a table of the sessions'
SQLite database: the CLI, notebooks and the server share that database already, its writes are
transactions (two processes creating keys at once lose nothing) and a revocation is seen by the
next request without any cache to drop. The database file is 0600, like the master key.

A key's scope is `["*"]` (every session) or session names and ids: a name follows the name
(a session launched again under it is covered), an id that one session only. `last_used_at` is
written at most once a minute per key (`TOUCH_EVERY`), not on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import BadInput, NotFound
from .sessions import NAME_PATTERN

if TYPE_CHECKING:  # the remote facade imports GatewayKey only: no SQLite there
    from .store import Store

PREFIX = "hsk_"
ALL = "*"
TOUCH_EVERY = 60.0  # seconds between two writes of a key's last_used_at
SHOWN = 8  # characters of the random part kept (and shown) to recognise a key
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._ @:-]{0,63}$"
_KEY = re.compile(r"^hsk_[A-Za-z0-9_-]{43}$")
_LABEL = re.compile(LABEL_PATTERN)
_NAME = re.compile(NAME_PATTERN)

SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    scope TEXT NOT NULL,
    prefix TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used_at REAL,
    revoked_at REAL
);
"""
_COLS = "id, label, scope, prefix, created_at, last_used_at, revoked_at"


class LabelTaken(BadInput):
    """An unrevoked key has this label already (a conflict with the store's state)."""

    http_status = 409


@dataclass
class GatewayKey:
    """A key as listed: never the key itself, except `key` on the answer to its creation."""

    id: str
    label: str
    scope: list[str]
    prefix: str
    created_at: float
    last_used_at: float | None = None
    revoked_at: float | None = None
    key: str | None = field(default=None, repr=False)  # the clear key: creation only

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def allows(self, session_id: str, session_name: str) -> bool:
        """Whether this key may use the session with this id and name."""
        return ALL in self.scope or session_id in self.scope or session_name in self.scope

    def public(self) -> dict[str, Any]:
        data = {"id": self.id, "label": self.label, "scope": list(self.scope),
                "prefix": self.prefix, "created_at": self.created_at,
                "last_used_at": self.last_used_at, "revoked_at": self.revoked_at}
        if self.key is not None:
            data["key"] = self.key
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GatewayKey:
        return cls(id=str(data["id"]), label=str(data["label"]),
                   scope=[str(s) for s in data["scope"]], prefix=str(data["prefix"]),
                   created_at=float(data["created_at"]), last_used_at=data.get("last_used_at"),
                   revoked_at=data.get("revoked_at"), key=data.get("key"))


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(text: str) -> bool:
    """Whether `text` has a gateway key's form (what a request's bearer token is tried as)."""
    return bool(_KEY.fullmatch(text))


def check_scope(scope: Sequence[str]) -> list[str]:
    """The scope as stored: '*' alone, or distinct session names/ids; BadInput otherwise."""
    entries = [str(s) for s in scope]
    if not entries:
        raise BadInput("a gateway key needs a scope",
                       hint="name its sessions, or give '*' for every session")
    if ALL in entries:
        if len(entries) > 1:
            raise BadInput("'*' (every session) cannot be combined with session names",
                           hint="give either '*' or the sessions")
        return [ALL]
    for entry in entries:
        if not _NAME.fullmatch(entry):
            raise BadInput(f"{entry!r} is not a session name or id",
                           hint="names are letters, digits, '.', '_' and '-' (at most 63); "
                           "'*' means every session")
    return list(dict.fromkeys(entries))


def _record(row: tuple[Any, ...]) -> GatewayKey:
    return GatewayKey(id=row[0], label=row[1], scope=json.loads(row[2]), prefix=row[3],
                      created_at=row[4], last_used_at=row[5], revoked_at=row[6])


class GatewayKeys:
    """The key table in the sessions' database (shared with the session and job stores)."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        store.script(SCHEMA)

    def create(self, label: str | None = None, scope: Sequence[str] = (ALL,)) -> GatewayKey:
        """A new key; the answer is the only place its clear text ever appears."""
        scope = check_scope(scope)
        if label is not None and not _LABEL.fullmatch(label):
            raise BadInput(f"bad key label {label!r}",
                           hint="1-64 characters: letters, digits, spaces and . _ @ : -, "
                           "starting with a letter or digit")
        import sqlite3

        key = PREFIX + secrets.token_urlsafe(32)
        now = self.clock()
        with self.store.tx() as db:
            taken = {r[0] for r in db.execute(
                "SELECT label FROM gateway_keys WHERE revoked_at IS NULL")}
            if label is None:
                n = 1
                while f"key-{n}" in taken:
                    n += 1
                label = f"key-{n}"
            elif label in taken:
                raise LabelTaken(f"a gateway key labelled {label!r} exists already",
                               hint="choose another label, or revoke that key first")
            while True:
                kid = secrets.token_hex(4)
                try:
                    db.execute("INSERT INTO gateway_keys VALUES (?,?,?,?,?,?,NULL,NULL)",
                               (kid, digest(key), label, json.dumps(scope),
                                PREFIX + key[len(PREFIX):len(PREFIX) + SHOWN], now))
                    break
                except sqlite3.IntegrityError:  # the id was taken (1 in 4 billion)
                    continue
        return GatewayKey(id=kid, label=label, scope=scope,
                          prefix=PREFIX + key[len(PREFIX):len(PREFIX) + SHOWN],
                          created_at=now, key=key)

    def list(self) -> list[GatewayKey]:
        """Every key, revoked ones too (their revoked_at set), oldest first."""
        rows = self.store.query(f"SELECT {_COLS} FROM gateway_keys ORDER BY created_at, id")
        return [_record(r) for r in rows]

    def get(self, id_or_label: str) -> GatewayKey:
        """The key with this id, else the one with this label (an unrevoked one first)."""
        rows = self.store.query(
            f"SELECT {_COLS} FROM gateway_keys WHERE id=? OR label=? "
            "ORDER BY id=? DESC, revoked_at IS NOT NULL, created_at DESC",
            (id_or_label, id_or_label, id_or_label))
        if not rows:
            known = [f"{k.id} ({k.label})" for k in self.list() if not k.revoked]
            raise NotFound(f"no gateway key {id_or_label!r}",
                           hint=("keys: " + ", ".join(known)) if known
                           else "there are none (hpcserve keys create makes one)")
        return _record(rows[0])

    def revoke(self, id_or_label: str) -> GatewayKey:
        """Revoke a key by id or label; revoking a revoked key changes nothing."""
        found = self.get(id_or_label)
        if not found.revoked:
            with self.store.tx() as db:
                db.execute("UPDATE gateway_keys SET revoked_at=? WHERE id=? AND "
                           "revoked_at IS NULL", (self.clock(), found.id))
            found = self.get(found.id)
        return found

    def check(self, presented: str) -> GatewayKey | None:
        """The unrevoked key `presented` is, else None. Records the use (at most once a
        minute per key: one SELECT by hash is all a request costs otherwise)."""
        if not looks_like_key(presented):
            return None
        wanted = digest(presented)
        rows = self.store.query(f"SELECT {_COLS}, hash FROM gateway_keys WHERE hash=?",
                                (wanted,))
        if not rows or not hmac.compare_digest(rows[0][-1], wanted):
            return None
        found = _record(rows[0][:-1])
        if found.revoked:
            return None
        now = self.clock()
        if found.last_used_at is None or now - found.last_used_at >= TOUCH_EVERY:
            with self.store.tx() as db:
                db.execute("UPDATE gateway_keys SET last_used_at=MAX(IFNULL(last_used_at, 0), ?)"
                           " WHERE id=?", (now, found.id))
            found.last_used_at = now
        return found
