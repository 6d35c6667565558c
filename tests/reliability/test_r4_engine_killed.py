"""R4: an engine process killed behind our back (local target) is `failed`, with the reason and
the log tail, within one monitor tick."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from conftest import record
from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.sessions import State

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]
TICK = 0.5


@pytest.fixture
def hp():
    h = Hpcserve(poll_interval=TICK)
    yield h
    for s in h.sessions(live_only=True):
        h.stop(s.id)
    h.close()


def _detect(hp: Hpcserve, sid: str) -> tuple[float, object]:
    start = time.monotonic()
    while hp.status(sid).state == State.READY and time.monotonic() - start < 10:
        time.sleep(0.01)
    return time.monotonic() - start, hp.status(sid)


@pytest.mark.parametrize("victim", ["engine", "group"])
def test_killed_engine_is_failed_within_one_tick(hp, victim):
    s = hp.launch("smollm2-135m", timeout=120)
    assert s.state == State.READY, s.reason
    runner = psutil.Process(s.handle["replicas"][0]["pid"])
    if victim == "engine":  # the llama.cpp server under the runner: the runner records -9
        engine = runner.children()[0]
        engine.send_signal(signal.SIGKILL)
    else:  # the whole process group, runner included: no exit status is recorded
        os.killpg(runner.pid, signal.SIGKILL)
    took, dead = _detect(hp, s.id)
    assert dead.state == State.FAILED, (dead.state, dead.reason)
    assert "killed" in dead.reason, dead.reason
    assert "GET /v1/models" in dead.log_tail, dead.log_tail  # the engine's own log lines
    assert took <= TICK + 0.5, f"failure seen after {took:.2f} s (tick {TICK} s)"
    assert not psutil.pid_exists(runner.pid) or runner.status() == psutil.STATUS_ZOMBIE
    record("R4", **{f"{victim}_kill_to_failed_s": round(took, 3), "poll_interval_s": TICK,
                    f"{victim}_reason": dead.reason,
                    f"{victim}_log_tail_lines": len(dead.log_tail.splitlines())})
