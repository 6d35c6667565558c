import os
import stat
import threading

import pytest

from hpcserve_jupyter.sessions import Session, State
from hpcserve_jupyter.store import StaleSession, Store


def make(i: int = 1, name: str = "s") -> Session:
    return Session(id=f"id{i:06d}", name=f"{name}-{i}", recipe="r", backend="b", target="local")


def test_insert_update_get_and_events(tmp_path):
    st = Store(tmp_path / "db" / "sessions.db")
    s = make()
    st.insert(s)
    s.transition(State.STARTING, "go")
    st.update(s, "starting", "go")
    got = st.get(s.id)
    assert got.state == State.STARTING and got.version == 1
    kinds = [e["kind"] for e in st.events(s.id)]
    assert kinds == ["created", "starting"]
    assert stat.S_IMODE(os.stat(tmp_path / "db" / "sessions.db").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "db").st_mode) == 0o700


def test_compare_and_set_refuses_a_stale_writer(tmp_path):
    st = Store(tmp_path / "s.db")
    st.insert(make())
    a, b = st.get("id000001"), st.get("id000001")
    a.transition(State.STARTING)
    st.update(a)
    b.transition(State.FAILED, "late")
    with pytest.raises(StaleSession):
        st.update(b)
    assert st.get("id000001").state == State.STARTING


def test_touch_only_moves_forward_and_survives_updates(tmp_path):
    st = Store(tmp_path / "s.db")
    s = make()
    st.insert(s)
    st.touch(s.id, s.last_activity + 100)
    st.touch(s.id, s.last_activity + 50)
    old = st.get(s.id)
    assert old.last_activity == s.last_activity + 100
    s.transition(State.STARTING)
    st.update(s)  # written from a copy read before the touch
    assert st.get(s.id).last_activity == s.last_activity + 100 or \
        st.get(s.id).last_activity == old.last_activity


def test_find_by_id_prefix_and_name(tmp_path):
    st = Store(tmp_path / "s.db")
    for i in range(3):
        st.insert(make(i))
    assert [s.id for s in st.find("s-1")] == ["id000001"]
    assert len(st.find("id0000")) == 3
    assert st.find("nothing") == []
    assert st.name_in_use("s-2")


def test_like_wildcards_in_a_key_are_plain_characters(tmp_path):
    """'%' and '_' typed by a user match themselves, not any id or name."""
    st = Store(tmp_path / "s.db")
    st.insert(make(1, name="a_b"))
    st.insert(make(2, name="axb"))
    assert st.find("%") == [] and st.find("id_") == [] and st.find("\\") == []
    assert sorted(s.id for s in st.find("id00000")) == ["id000001", "id000002"]
    assert sorted(st.names_like("a_")) == ["a_b-1"]
    assert sorted(st.names_like("a%")) == []


def test_two_stores_on_one_file_from_threads(tmp_path):
    path = tmp_path / "s.db"
    stores = [Store(path), Store(path)]

    def writer(k: int) -> None:
        for i in range(50):
            stores[k % 2].insert(make(k * 1000 + i, name=f"w{k}"))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(Store(path).all()) == 200
