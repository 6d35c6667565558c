"""Two real `jupyter server`s of one user sharing one state directory (HPCSERVE_HOME): both
launch and stop concurrently, both list the same sessions, the store stays intact (SQLite
integrity check), and monitor actions happen once, not once per server: each session has
exactly one `ready`, one `stop`/`stopped` (autostop included) and one `failed` event, as only
the holder of the monitor lock (monitorlock.py) runs monitor passes. After a `kill -9` of the
holder, the other server takes the lock over and keeps monitoring (a killed engine is failed
and an idle session autostopped, once each)."""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import KillableServer, free_port, marked_processes, record, until, wait_ready

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]
PER_SERVER = 3


def launch(server: KillableServer, **overrides: object) -> str:
    r = server.http.post("hpcserve/api/sessions",
                         json={"recipe": "smollm2-135m", "overrides": overrides})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def listing(server: KillableServer) -> dict[str, str]:
    r = server.http.get("hpcserve/api/sessions")
    assert r.status_code == 200, r.text
    return {s["id"]: s["state"] for s in r.json()["sessions"]}


def event_counts(server: KillableServer, sid: str) -> Counter[str]:
    r = server.http.get("hpcserve/api/events/log", params={"session": sid})
    assert r.status_code == 200, r.text
    return Counter(e["kind"] for e in r.json()["events"])


def holder(home: os.PathLike[str]) -> int:
    return int(open(os.path.join(home, "monitor.lock")).read().strip() or 0)


def test_two_servers_one_state_dir(tmp_path, isolated_home):
    first = KillableServer(tmp_path, free_port())
    second = KillableServer(tmp_path, free_port())
    servers = {first.proc.pid: first, second.proc.pid: second}
    try:
        listing(first), listing(second)  # both managers are up
        assert until(lambda: holder(isolated_home) in servers, 10), holder(isolated_home)
        monitor = servers[holder(isolated_home)]
        other = second if monitor is first else first

        with ThreadPoolExecutor(2 * PER_SERVER) as pool:
            ids = list(pool.map(lambda s: launch(s), [first, second] * PER_SERVER))
        assert len(set(ids)) == len(ids)
        for sid in ids:
            wait_ready(other, sid)  # made ready by the monitor, seen by the other server too
        assert listing(first) == listing(second)
        # stops from both servers, concurrently
        with ThreadPoolExecutor(len(ids)) as pool:
            stops = list(pool.map(
                lambda pair: pair[0].http.delete(f"hpcserve/api/sessions/{pair[1]}"),
                zip([first, second] * PER_SERVER, ids, strict=True)))
        assert all(r.status_code == 200 and r.json()["state"] == "stopped" for r in stops)
        counts = {sid: event_counts(first, sid) for sid in ids}
        doubled = {sid: c for sid, c in counts.items()
                   if (c["ready"], c["stop"], c["stopped"]) != (1, 1, 1)}
        assert doubled == {}, doubled

        # The monitor dies: the other server takes the lock over on its next tick.
        victim, idle = launch(other), launch(other, idle_timeout="3s")
        wait_ready(other, victim), wait_ready(other, idle)
        monitor.kill9()
        assert until(lambda: holder(isolated_home) == other.proc.pid, 10), holder(isolated_home)
        for pid in marked_processes(isolated_home)[victim]:
            os.kill(pid, 9)
        assert until(lambda: listing(other)[victim] == "failed", 10), listing(other)
        assert until(lambda: listing(other)[idle] == "stopped", 20), listing(other)
        after = {sid: event_counts(other, sid) for sid in (victim, idle)}
        assert after[victim]["failed"] == 1 and after[victim]["stopped"] == 0, after
        assert (after[idle]["stop"], after[idle]["stopped"]) == (1, 1), after
        assert until(lambda: not marked_processes(isolated_home), 10)

        with sqlite3.connect(isolated_home / "sessions.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = db.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM sessions").fetchone()
        assert rows == (len(ids) + 2, len(ids) + 2)
        record("R-shared-state", servers=2, sessions=len(ids) + 2,
               launched_and_stopped_from_both=True, doubled_monitor_actions=len(doubled),
               monitor_taken_over_after_kill9=True, store_integrity="ok")
    finally:
        for server in (first, second):
            if server.proc.poll() is None:
                for sid, state in listing(server).items():
                    if state in ("pending", "starting", "ready"):
                        server.http.delete(f"hpcserve/api/sessions/{sid}")
            server.stop()
