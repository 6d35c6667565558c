"""SQLite persistence of jobs, in the sessions' database: the same WAL connection, the same
compare-and-set on a version, and the same event log (a job's events carry its id), so jobs
survive restarts and are evented beside sessions."""

from __future__ import annotations

import json

from .jobs import JOB_TERMINAL, Job
from .store import StaleSession, Store, _like_prefix

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    target TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""

_LIVE = "state NOT IN ({})".format(",".join("?" * len(JOB_TERMINAL)))
_TERMINAL = [str(s) for s in JOB_TERMINAL]


class JobStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        store.script(SCHEMA)

    def insert(self, job: Job, event: str = "created", message: str = "") -> None:
        with self.store.tx() as db:
            db.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?)",
                       (job.id, job.name, str(job.state), job.target, job.version,
                        job.created_at, json.dumps(job.to_dict())))
            self.store.event(db, job.id, str(job.state), event, message)

    def update(self, job: Job, event: str | None = None, message: str = "") -> None:
        """Write `job` if nobody changed it since it was read; bumps its version."""
        with self.store.tx() as db:
            new_version = job.version + 1
            data = job.to_dict()
            data["version"] = new_version
            cur = db.execute("UPDATE jobs SET name=?, state=?, version=?, data=? "
                             "WHERE id=? AND version=?",
                             (job.name, str(job.state), new_version, json.dumps(data), job.id,
                              job.version))
            if cur.rowcount != 1:
                raise StaleSession(job.id)
            if event:
                self.store.event(db, job.id, str(job.state), event, message)
        job.version = new_version

    def get(self, job_id: str) -> Job | None:
        rows = self.store.query("SELECT data FROM jobs WHERE id=?", (job_id,))
        return Job.from_dict(json.loads(rows[0][0])) if rows else None

    def all(self, *, live_only: bool = False) -> list[Job]:
        query, args = "SELECT data FROM jobs", []
        if live_only:
            query, args = query + " WHERE " + _LIVE, _TERMINAL
        rows = self.store.query(query + " ORDER BY created_at", args)
        return [Job.from_dict(json.loads(r[0])) for r in rows]

    def find(self, key: str) -> list[Job]:
        """Jobs whose id, id prefix or name is `key` (live ones first, then newest)."""
        rows = self.store.query("SELECT data FROM jobs WHERE id=? OR name=? OR id LIKE ? "
                                "ESCAPE '\\' ORDER BY created_at",
                                (key, key, _like_prefix(key)))
        found = [Job.from_dict(json.loads(r[0])) for r in rows]
        exact = [j for j in found if key in (j.id, j.name)]
        return sorted(exact or found, key=lambda j: (j.state.terminal, -j.created_at))

    def name_in_use(self, name: str) -> bool:
        return bool(self.store.query(f"SELECT 1 FROM jobs WHERE name=? AND {_LIVE} LIMIT 1",
                                     (name, *_TERMINAL)))

    def names_like(self, prefix: str) -> list[str]:
        rows = self.store.query("SELECT name FROM jobs WHERE name LIKE ? ESCAPE '\\'",
                                (_like_prefix(prefix),))
        return [r[0] for r in rows]
