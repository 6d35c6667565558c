"""The session manager driving the real llama.cpp server on the SmolLM2 GGUF model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import psutil
import pytest

from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.errors import BadInput, LaunchError, NotFound, NotReady
from hpcserve_jupyter.sessions import State

pytestmark = pytest.mark.model


@pytest.fixture
def hp():
    h = Hpcserve(poll_interval=0.5)
    yield h
    for s in h.sessions(live_only=True):
        h.stop(s.id)
    h.close()


def engine_pids(session) -> list[int]:
    return [r["pid"] for r in (session.handle or {}).get("replicas", [])]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_full_lifecycle_on_real_llama_cpp(hp):
    seen = []
    s = hp.launch("smollm2-135m", timeout=120, progress=lambda x: seen.append(str(x.state)))
    assert s.state == State.READY, (s.reason, s.log_tail)
    assert seen[0] == "pending" and seen[-1] == "ready"
    assert hp.models(s.id) == ["smollm2-135m"]
    q = "Name one planet of the solar system."
    a1 = hp.prompt(s.id, q, temperature=0, max_tokens=24)
    a2 = hp.prompt(s.id, q, temperature=0, max_tokens=24)
    assert a1 and a1 == a2  # temperature 0 is repeatable
    deltas = list(hp.stream(s.id, q, temperature=0, max_tokens=24))
    assert len(deltas) > 3 and "".join(deltas) == a1
    logs = hp.logs(s.id, tail=500)
    assert "/v1/chat/completions" in logs
    assert hp.manager.api_key(s) not in logs
    stopped = hp.stop(s.id)
    assert stopped.state == State.STOPPED
    assert all(gone(p) for p in engine_pids(stopped))
    again = hp.stop(s.id)  # stopping a stopped session is a no-op
    assert again.state == State.STOPPED and again.version == stopped.version
    kinds = [e["kind"] for e in hp.events(s.id)]
    assert kinds[:2] == ["created", "launched"] and "ready" in kinds and kinds[-1] == "stopped"


def test_engine_requires_the_session_api_key(hp):
    s = hp.launch("smollm2-135m", timeout=120)
    url = s.endpoints[0] + "/v1/models"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = httpx.get(url, headers={"Authorization": f"Bearer {hp.manager.api_key(s)}"})
    assert ok.status_code == 200
    # The key is derived, not stored: the session store holds no copy of it.
    db = (hp.manager.home / "sessions.db").read_bytes()
    assert hp.manager.api_key(s).encode() not in db


def test_engine_that_exits_at_once_fails_with_reason_and_log_tail(hp, tmp_path):
    s = hp.launch("smollm2-135m", model=str(tmp_path / "missing.gguf"), timeout=60)
    assert s.state == State.FAILED
    assert "exited with code" in s.reason
    assert "missing.gguf" in s.log_tail
    assert all(gone(p) for p in engine_pids(s))
    with pytest.raises(NotReady, match="failed, not ready"):
        hp.prompt(s.id, "hello")


def test_prompt_to_a_session_that_is_not_ready_yet(hp):
    s = hp.launch("smollm2-135m", wait=False)
    with pytest.raises(NotReady, match=r"(?s)pending, not ready.*wait for it"):
        hp.prompt(s.id, "hi")
    assert hp.wait(s.id, timeout=60).state == State.READY


def test_port_in_use_fails_the_launch_clearly(hp):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(LaunchError, match=f"port {port}"):
            hp.launch("smollm2-135m", port=str(port))
    failed = hp.sessions()[-1]
    assert failed.state == State.FAILED and f"port {port}" in failed.reason


def test_bad_input_records_nothing(hp):
    for call, err in [
        (lambda: hp.launch("smollm2-13m"), NotFound),
        (lambda: hp.launch("smollm2-135m", backend="vllm"), BadInput),
        (lambda: hp.launch("smollm2-135m", backend="nope"), NotFound),
        (lambda: hp.launch("smollm2-135m", gpus="-1"), BadInput),
        (lambda: hp.launch("smollm2-135m", time="banana"), BadInput),
        (lambda: hp.launch("smollm2-135m", on="mars"), NotFound),
        (lambda: hp.launch("smollm2-135m", name="bad name; rm -rf /"), BadInput),
        (lambda: hp.launch("smollm2-135m", name="trailing-newline\n"), BadInput),
    ]:
        with pytest.raises(err):
            call()
    assert hp.sessions() == []


def test_gpu_recipe_without_gpus_fails_at_launch(hp):
    with pytest.raises(LaunchError, match="has none"):
        hp.launch("smollm2-135m", gpus="1")


def test_duplicate_live_name_is_refused(hp):
    hp.launch("smollm2-135m", name="mine", wait=False)
    with pytest.raises(BadInput, match="already named 'mine'"):
        hp.launch("smollm2-135m", name="mine", wait=False)


def test_idle_autostop_and_keepalive(hp):
    s = hp.launch("smollm2-135m", idle_timeout="3s", timeout=60)
    assert s.state == State.READY
    for _ in range(5):  # keepalive postpones the autostop
        time.sleep(1)
        hp.keepalive(s.id)
    assert hp.status(s.id).state == State.READY
    deadline = time.monotonic() + 10
    while hp.status(s.id).state != State.STOPPED and time.monotonic() < deadline:
        time.sleep(0.2)
    done = hp.status(s.id)
    assert done.state == State.STOPPED and "autostop" in done.reason
    assert all(gone(p) for p in engine_pids(done))


def test_max_lifetime_autostop(hp):
    s = hp.launch("smollm2-135m", max_lifetime="4s", timeout=60)
    deadline = time.monotonic() + 12
    while hp.status(s.id).state != State.STOPPED and time.monotonic() < deadline:
        hp.keepalive(s.id)  # activity does not extend a max lifetime
        time.sleep(0.3)
    assert "max lifetime" in hp.status(s.id).reason


def test_engine_killed_behind_our_back_is_failed(hp):
    s = hp.launch("smollm2-135m", timeout=60)
    os.killpg(engine_pids(s)[0], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while hp.status(s.id).state == State.READY and time.monotonic() < deadline:
        time.sleep(0.1)
    dead = hp.status(s.id)
    assert dead.state == State.FAILED and "killed" in dead.reason


LAUNCHER = textwrap.dedent("""
    import json, sys
    from hpcserve_jupyter.api import Hpcserve
    h = Hpcserve(poll_interval=0.5)
    a = h.launch("smollm2-135m", name="survivor", timeout=120)
    b = h.launch("smollm2-135m", name="victim", timeout=120)
    print(json.dumps({"a": a.id, "b": b.id, "b_pid": b.handle["replicas"][0]["pid"],
                      "states": [str(a.state), str(b.state)]}), flush=True)
    import time; time.sleep(600)
""")


def test_killed_manager_restarted_finds_live_ready_and_dead_failed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["states"] == ["ready", "ready"]
    finally:
        proc.kill()  # kill -9 of the manager: no chance to clean up
        proc.wait()
    os.killpg(info["b_pid"], signal.SIGKILL)  # one engine dies while no manager runs
    time.sleep(0.3)
    h = Hpcserve(poll_interval=0.5)
    try:
        a, b = h.status(info["a"]), h.status(info["b"])
        assert a.state == State.READY, a.reason
        assert b.state == State.FAILED and "killed" in b.reason
        assert h.prompt(a.id, "Say hi", max_tokens=8)  # still serving, same key
    finally:
        h.stop(info["a"])
        h.close()


def test_two_managers_on_one_state_dir_monitor_once():
    """A second manager (another Jupyter server, a CLI) sees everything but does not act."""
    first, other = Hpcserve(poll_interval=0.5), Hpcserve(poll_interval=0.2)
    try:
        assert first.manager.monitoring and not other.manager.monitoring
        s = other.launch("smollm2-135m", timeout=60)  # launched by the non-monitor...
        assert s.state == State.READY  # ...made ready by the monitor's probes
        ticks = other.manager.ticks
        time.sleep(1)
        assert other.manager.ticks == ticks  # it never ran a monitor pass
        other.stop(s.id)
    finally:
        other.close()
        first.close()  # the monitor goes away: the lock is free for the next manager
    third = Hpcserve(poll_interval=0.2)
    try:
        assert third.manager.monitoring
    finally:
        third.close()


def test_event_streams_show_what_other_managers_of_the_state_dir_wrote():
    """A server's event stream tells its sidebar of sessions another server launched, and of
    the states that server's monitor found: changes are followed through the shared store."""
    first, other = Hpcserve(poll_interval=0.3), Hpcserve(poll_interval=0.3)
    sub = other.watch(snapshot=False)
    try:
        assert first.manager.monitoring and not other.manager.monitoring
        s = first.launch("smollm2-135m", timeout=60)
        first.stop(s.id)
        seen: list[tuple[str, str]] = []
        deadline = time.monotonic() + 10
        while "stopped" not in [st for _, st in seen] and time.monotonic() < deadline:
            event = sub.get(timeout=1)
            if event and event.get("session", {}).get("id") == s.id:
                seen.append((event["type"], event["session"]["state"]))
        states = [st for _, st in seen]
        assert "ready" in states and states[-1] == "stopped", seen
        assert len(states) == len(set(states)), seen  # each change told once
    finally:
        sub.close()
        other.close()
        first.close()


def test_time_left_counts_down_and_expiring_is_said_once():
    """A 40 s max lifetime with a 30 s warning: the views carry the time left, which falls;
    one `expiring` event arrives (not one per tick), naming the end time."""
    hp = Hpcserve(poll_interval=0.3, expiry_warning=30)
    sub = hp.watch(snapshot=False)
    try:
        s = hp.launch("smollm2-135m", max_lifetime="40s", timeout=60)
        first = hp.status(s.id).public()
        assert first["time_limit_s"] == 40 and 0 < first["time_left_s"] <= 40
        time.sleep(1.5)
        later = hp.status(s.id).public()
        assert later["time_left_s"] < first["time_left_s"]
        assert later["ends_at"] == first["ends_at"]  # the end stays put; only the rest falls
        notices = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and hp.status(s.id).state == State.READY:
            event = sub.get(timeout=0.5)
            if event and event["type"] == "expiring" and event["session"]["id"] == s.id:
                notices.append(event)
            if notices and hp.status(s.id).public()["time_left_s"] < 25:
                break  # a few ticks after the warning: any repeat would have come
        assert len(notices) == 1, notices
        assert first["ends_at"] in notices[0]["message"]
        assert notices[0]["session"]["time_left_s"] < 30
        kinds = [e["kind"] for e in hp.manager.events(s.id)]
        assert kinds.count("expiring") == 1
    finally:
        sub.close()
        for x in hp.sessions(live_only=True):
            hp.stop(x.id)
        hp.close()


def test_idle_expiring_is_said_once_per_idle_stretch():
    hp = Hpcserve(poll_interval=0.3, expiry_warning=600)
    try:
        s = hp.launch("smollm2-135m", idle_timeout="4s", timeout=60)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and [e["kind"] for e in hp.manager.events(
                s.id)].count("idle-expiring") < 1:
            time.sleep(0.2)
        hp.keepalive(s.id)  # a new idle stretch: it may be said again
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and hp.status(s.id).state != State.STOPPED:
            time.sleep(0.2)
        kinds = [e["kind"] for e in hp.manager.events(s.id)]
        assert kinds.count("idle-expiring") == 2, kinds
        done = hp.status(s.id)
        assert done.state == State.STOPPED and "idle" in done.reason
    finally:
        for x in hp.sessions(live_only=True):
            hp.stop(x.id)
        hp.close()
