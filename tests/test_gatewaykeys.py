"""The gateway key store (gatewaykeys.py) in the sessions' SQLite database, and the service's
scope rules: keys shown once and stored hashed, revocation, scopes, last-use writes at most once
a minute, and two processes creating keys at once."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facade_fixtures import facade_fixture
from hpcserve_jupyter.errors import BadInput, NotFound
from hpcserve_jupyter.gatewaykeys import (
    TOUCH_EVERY,
    GatewayKeys,
    LabelTaken,
    looks_like_key,
)
from hpcserve_jupyter.sessions import Session, State
from hpcserve_jupyter.store import Store

hp = facade_fixture()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "sessions.db")
    yield s
    s.close()


def test_a_key_is_shown_once_and_stored_as_its_hash_only(store, tmp_path):
    keys = GatewayKeys(store)
    made = keys.create("ai", ["m1"])
    assert made.key is not None and looks_like_key(made.key) and len(made.key) == 47
    assert made.key not in repr(made)
    assert made.prefix == made.key[:12] and made.label == "ai" and made.scope == ["m1"]
    listed = keys.list()
    assert [(k.id, k.key) for k in listed] == [(made.id, None)]
    assert "key" not in listed[0].public()
    rows = store.query("SELECT hash FROM gateway_keys")
    assert rows == [(hashlib.sha256(made.key.encode()).hexdigest(),)]
    store.close()
    files = list(tmp_path.glob("sessions.db*"))  # the database, its WAL and shared memory
    assert files
    for path in files:
        assert made.key[4:].encode() not in path.read_bytes(), path
    again = GatewayKeys(Store(tmp_path / "sessions.db"))
    assert again.check(made.key).id == made.id  # a restarted process checks it the same way


def test_check_accepts_the_key_only(store):
    keys = GatewayKeys(store)
    made = keys.create()
    other = keys.create()
    assert keys.check(made.key).id == made.id and keys.check(other.key).id == other.id
    assert made.label == "key-1" and other.label == "key-2"
    for wrong in ("", "hsk_", made.key[:-1], made.key + "x", made.key[:-1] + "A"
                  if made.key[-1] != "A" else made.key[:-1] + "B", made.key.upper(),
                  made.prefix, hashlib.sha256(made.key.encode()).hexdigest()):
        assert keys.check(wrong) is None, wrong


def test_revoke_by_id_or_label_and_the_key_is_refused(store):
    clock = Clock()
    keys = GatewayKeys(store, clock=clock)
    a, b = keys.create("a"), keys.create("b")
    clock.now += 5
    revoked = keys.revoke(a.id)
    assert revoked.revoked and revoked.revoked_at == clock.now
    assert keys.check(a.key) is None and keys.check(b.key) is not None
    assert keys.revoke("b").id == b.id and keys.check(b.key) is None
    clock.now += 5
    assert keys.revoke(a.id).revoked_at == revoked.revoked_at  # again: unchanged
    with pytest.raises(NotFound, match="no gateway key 'zz'"):
        keys.revoke("zz")
    # a label is free again once its key is revoked; the label then names the live key
    c = keys.create("a")
    assert keys.get("a").id == c.id and keys.revoke("a").id == c.id


def test_labels_and_scopes_are_checked(store):
    keys = GatewayKeys(store)
    keys.create("taken")
    with pytest.raises(BadInput, match="exists already"):
        keys.create("taken")
    for label in ("", " x", "a\nb", "x" * 65, "-a", "trailing\n"):
        with pytest.raises(BadInput, match="bad key label"):
            keys.create(label)
    with pytest.raises(BadInput, match="cannot be combined"):
        keys.create(None, ["*", "m1"])
    with pytest.raises(BadInput, match="needs a scope"):
        keys.create(None, [])
    for bad in ("../m", "a b", "", "x" * 64, "m1\n"):
        with pytest.raises(BadInput, match="not a session name"):
            keys.create(None, [bad])
    assert keys.create(None, ["m1", "m2", "m1"]).scope == ["m1", "m2"]
    assert [k.label for k in keys.list()] == ["taken", "key-1"]


def test_scope_allows_names_and_ids():
    from hpcserve_jupyter.gatewaykeys import GatewayKey

    scoped = GatewayKey(id="k", label="l", scope=["m1", "abcd1234"], prefix="hsk_", created_at=0)
    assert scoped.allows("ffff0000", "m1") and scoped.allows("abcd1234", "renamed")
    assert not scoped.allows("ffff0000", "m2")
    every = GatewayKey(id="k", label="l", scope=["*"], prefix="hsk_", created_at=0)
    assert every.allows("anything", "any-name")


def test_last_use_is_written_at_most_once_a_minute(store):
    clock = Clock()
    keys = GatewayKeys(store, clock=clock)
    made = keys.create()
    assert keys.check(made.key).last_used_at == clock.now
    first = clock.now
    writes = store.query("SELECT total_changes()")[0][0]
    for _ in range(5):
        clock.now += TOUCH_EVERY / 10
        assert keys.check(made.key).last_used_at == first
    assert store.query("SELECT total_changes()")[0][0] == writes  # reads only
    clock.now = first + TOUCH_EVERY
    assert keys.check(made.key).last_used_at == clock.now
    assert keys.get(made.id).last_used_at == clock.now


WORKER = """
import sys
from pathlib import Path
from hpcserve_jupyter.gatewaykeys import GatewayKeys
from hpcserve_jupyter.store import Store
db, go, n, tag = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
keys = GatewayKeys(Store(db))
while not go.exists():
    pass
for i in range(n):
    print(keys.create(f"{tag}-{i}").key, flush=True)
"""


def test_two_processes_creating_keys_at_once_lose_none(store, tmp_path):
    GatewayKeys(store)  # the table exists before the race
    go = tmp_path / "go"
    n = 40
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(store.path), str(go), str(n),
                               tag], stdout=subprocess.PIPE, text=True)
             for tag in ("cli", "server")]
    time.sleep(0.5)  # both started and waiting (not an assertion: only more overlap)
    go.touch()
    made = [p.communicate(timeout=120)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    keys = GatewayKeys(store)
    listed = keys.list()
    assert len(listed) == 2 * n and len({k.id for k in listed}) == 2 * n
    assert {k.label for k in listed} == {f"{t}-{i}" for t in ("cli", "server")
                                         for i in range(n)}
    assert all(keys.check(key) is not None for key in made[0] + made[1])


def _session(hp, name: str, sid: str) -> Session:
    s = Session(id=sid, name=name, recipe="standin", backend="llama-cpp", target="local",
                state=State.READY, endpoints=["http://127.0.0.1:9"], model="m",
                api_flavour="openai", spec={}, ready_at=time.time())
    hp.manager.store.insert(s, "created", "test record")
    return s


def test_the_service_resolves_the_scope_against_the_sessions(hp):
    _session(hp, "alpha", "aa11bb22")
    _session(hp, "beta", "aa11cc33")
    made = hp.create_gateway_key("one", sessions=["alpha", "aa11cc33"])
    assert made.scope == ["alpha", "aa11cc33"]
    assert hp.create_gateway_key("all").scope == ["*"]
    for missing in ("gamma", "aa11cc", "aa11"):  # an id prefix is not an id: no guessing
        with pytest.raises(NotFound, match=f"no session '{missing}'"):
            hp.create_gateway_key(sessions=[missing])
    with pytest.raises(BadInput, match="needs a scope"):
        hp.create_gateway_key(sessions=[])
    with pytest.raises(LabelTaken, match="exists already"):
        hp.create_gateway_key("one")
    assert [k.label for k in hp.gateway_keys()] == ["one", "all"]
    assert hp.revoke_gateway_key("one").revoked
    assert hp.service.check_gateway_key(made.key) is None
    assert json.dumps(hp.gateway_keys()[0].public())  # JSON as the REST API sends it
