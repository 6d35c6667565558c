"""The facade's event subscription (what the control panel's table follows): `watch()` hands
the manager's events to a consumer thread, `subscribe(callback)` calls back on a dispatcher
thread. A launch that fails at once (a GPU recipe on a machine without GPUs) gives real events
without a model."""

from __future__ import annotations

import os
import threading

import pytest

from facade_fixtures import facade_fixture
from hpcserve_jupyter.api import Hpcserve, Subscription
from hpcserve_jupyter.errors import BadInput, LaunchError

hp = facade_fixture()


def failing_launch(hp: Hpcserve) -> None:
    with pytest.raises(LaunchError, match="GPU"):
        hp.launch("bge-m3", wait=False)


def test_watch_starts_with_a_snapshot_then_delivers_changes(hp):
    with hp.watch() as sub:
        first = sub.get(timeout=5)
        assert first["type"] == "snapshot" and first["sessions"] == []
        failing_launch(hp)
        created = sub.get(timeout=5)
        failed = sub.get(timeout=5)
    assert created["type"] == "created" and created["session"]["state"] == "pending"
    assert failed["type"] == "launch-failed" and failed["session"]["state"] == "failed"
    assert failed["session"]["id"] == created["session"]["id"]
    assert "GPU" in failed["session"]["reason"]
    assert sub.closed and sub.get(timeout=0.1) is None
    assert hp.manager._subscribers == set()  # the loop side let go of its queue


def test_watch_without_snapshot_and_iteration_ends_on_close(hp):
    sub = hp.watch(snapshot=False)
    seen: list[str] = []
    two = threading.Event()

    def consume() -> None:
        for event in sub:  # ends when the subscription is closed
            seen.append(event["type"])
            if len(seen) == 2:
                two.set()

    t = threading.Thread(target=consume)
    t.start()
    failing_launch(hp)
    assert two.wait(5)
    sub.close()
    t.join(5)
    assert not t.is_alive()
    assert seen == ["created", "launch-failed"]
    assert hp.manager._subscribers == set()


def test_subscribe_calls_back_on_another_thread_which_may_use_the_facade(hp):
    got: list[tuple[str, int, str]] = []
    done = threading.Event()

    def callback(event: dict) -> None:
        # calling the facade from the callback must not deadlock the facade's loop
        got.append((event["type"], len(hp.sessions()), threading.current_thread().name))
        if event["type"] == "launch-failed":
            done.set()

    sub = hp.subscribe(callback)
    assert isinstance(sub, Subscription)
    failing_launch(hp)
    assert done.wait(5)
    assert [g[0] for g in got] == ["snapshot", "created", "launch-failed"]
    assert {g[2] for g in got} == {"hpcserve-events"}
    sub.close()
    failing_launch(hp)
    assert [g[0] for g in got] == ["snapshot", "created", "launch-failed"]  # no more


def test_a_failing_callback_does_not_end_the_subscription(hp):
    calls: list[str] = []
    done = threading.Event()

    def callback(event: dict) -> None:
        calls.append(event["type"])
        if event["type"] == "launch-failed":
            done.set()
        raise RuntimeError("a front-end bug")

    sub = hp.subscribe(callback, snapshot=False)
    failing_launch(hp)
    assert done.wait(5)
    assert calls == ["created", "launch-failed"]
    sub.close()


def test_closing_the_facade_closes_its_subscriptions(tmp_path):
    hp = Hpcserve(home=tmp_path / "home", target_configs={"local": {"kind": "local"}})
    sub = hp.watch()
    hp.close()
    assert sub.closed
    assert [e["type"] for e in sub] in ([], ["snapshot"])  # what was queued, then the end


def test_target_secrets_names_only(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTER_KEY_PASS", "s3cret")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hp = Hpcserve(home=tmp_path / "home", monitor=False, target_configs={
        "local": {"kind": "local"},
        "cluster": {"kind": "slurm", "host": "login.example.invalid",
                    "key_passphrase_env": "CLUSTER_KEY_PASS"},
        "pods": {"kind": "tapis-pods", "base_url": "https://tenant.example.invalid",
                 "username": "jdoe", "hf_token_env": "MY_HF"}})
    try:
        assert hp.target_secrets("local") == [
            {"label": "Hugging Face token", "env": "HF_TOKEN", "is_set": False}]
        assert hp.target_secrets("cluster") == [
            {"label": "SSH key passphrase", "env": "CLUSTER_KEY_PASS", "is_set": True},
            {"label": "Hugging Face token", "env": "HF_TOKEN", "is_set": False}]
        pods = hp.target_secrets("pods")
        assert [(f["label"], f["env"]) for f in pods] == [
            ("Tapis password", "TAPIS_PASSWORD"), ("Tapis access token", "TAPIS_TOKEN"),
            ("Hugging Face token", "MY_HF")]
        assert "s3cret" not in repr(hp.target_secrets("cluster"))
        # set_target_secrets: only the variables the target names
        monkeypatch.setenv("MY_HF", "before")  # so monkeypatch restores the environment
        hp.set_target_secrets("pods", {"MY_HF": "hf_x"})
        assert os.environ["MY_HF"] == "hf_x"
        with pytest.raises(BadInput, match="reads no secret from PATH") as err:
            hp.set_target_secrets("cluster", {"PATH": "/evil"})
        assert "CLUSTER_KEY_PASS" in err.value.hint
    finally:
        hp.close()
