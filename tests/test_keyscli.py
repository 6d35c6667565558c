"""`hpcserve keys create/list/revoke`, run as a real subprocess on the test's state directory."""

from __future__ import annotations

import json
import time

from hpcserve_jupyter.gatewaykeys import GatewayKeys
from hpcserve_jupyter.sessions import Session, State
from hpcserve_jupyter.store import Store


def record_session(home, name: str, sid: str) -> None:
    """A ready session in the state directory's store, as a server would have recorded it."""
    store = Store(home / "sessions.db")
    store.insert(Session(id=sid, name=name, recipe="standin", backend="llama-cpp",
                         target="local", state=State.READY, endpoints=["http://127.0.0.1:9"],
                         model="m", api_flavour="openai", spec={}, ready_at=time.time()),
                 "created", "test record")
    store.close()


def test_create_list_revoke(run_cli, isolated_home):
    record_session(isolated_home, "m1", "0a1b2c3d")
    r = run_cli("keys", "create", "--label", "jupyter-ai", "--session", "m1")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("hsk_") and len(key) == 47 and r.stdout.count("\n") == 1
    assert "shown this once" in r.stderr and "m1" in r.stderr and key not in r.stderr

    store = Store(isolated_home / "sessions.db")  # what a server on this directory sees
    try:
        found = GatewayKeys(store).check(key)
        assert found is not None and found.label == "jupyter-ai" and found.scope == ["m1"]
    finally:
        store.close()

    r = run_cli("keys", "create", "--json")  # every session
    made = json.loads(r.stdout)
    assert r.returncode == 0 and made["scope"] == ["*"] and made["key"].startswith("hsk_")

    r = run_cli("keys", "list")
    assert r.returncode == 0
    assert key not in r.stdout and made["key"] not in r.stdout
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "LABEL", "SESSIONS", "KEY"]
    assert "jupyter-ai" in lines[1] and key[:12] + "..." in lines[1] and "active" in lines[1]
    listed = json.loads(run_cli("keys", "list", "--json").stdout)
    assert [(k["label"], k["scope"]) for k in listed] == [("jupyter-ai", ["m1"]),
                                                          ("key-1", ["*"])]
    assert all("key" not in k for k in listed)

    r = run_cli("keys", "revoke", made["id"])
    assert r.returncode == 0 and "revoked" in r.stderr
    r = run_cli("keys", "revoke", "jupyter-ai")  # by label
    assert r.returncode == 0
    listed = json.loads(run_cli("keys", "list", "--json").stdout)
    assert all(k["revoked_at"] is not None for k in listed)
    assert "revoked" in run_cli("keys", "list").stdout


def test_clear_errors(run_cli, isolated_home):
    record_session(isolated_home, "m1", "0a1b2c3d")
    cases = [(["keys", "revoke", "nope"], "no gateway key 'nope'"),
             (["keys", "create", "--session", "nope"], "no session 'nope'"),
             (["keys", "create", "-s", "*", "-s", "m1"], "cannot be combined"),
             (["keys", "create", "--session", "../etc"], "not a session name"),
             (["keys", "create", "--label=.x"], "bad key label"),
             (["keys"], "KEYS_COMMAND")]
    for args, message in cases:
        r = run_cli(*args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        # the message first, from hpcserve (or argparse's usage), not a traceback
        assert r.stderr.startswith(("hpcserve: ", "usage: ")) and r.stdout == "", r.stderr
    r = run_cli("keys", "list")
    assert r.returncode == 0 and "no gateway keys" in r.stderr
