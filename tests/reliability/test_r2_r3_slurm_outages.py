"""R2: the SSH connection cut mid-stream (the sshd child serving our connection killed): the
stream ends with a clear error, the connection comes back, the session stays `ready` and the
next prompt works. R3: slurmctld stopped for 60 s: the sessions show unreachable, none is
marked failed, all recover. Real sshd and SLURM of scripts/testcluster.sh."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import record, until
from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.errors import HpcserveError
from hpcserve_jupyter.sessions import State

pytestmark = [pytest.mark.model, pytest.mark.timeout(420)]
STREAM_END_BOUND = 30  # seconds for a cut stream to end with an error
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "testcluster.sh"


@pytest.fixture
def hp(slurm_config):
    h = Hpcserve(poll_interval=1.0, target_configs={"cluster": slurm_config})
    yield h
    for s in h.sessions(live_only=True):
        with contextlib.suppress(HpcserveError):
            h.stop(s.id)
    h.close()


def our_sshd_children(port: int) -> list[psutil.Process]:
    """The sshd processes holding the other end of this process's connections to sshd."""
    ours = {c.laddr.port for c in psutil.Process().net_connections("tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED}
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] != "sshd":
            continue
        with contextlib.suppress(psutil.Error):
            if any(c.raddr and c.laddr.port == port and c.raddr.port in ours
                   for c in proc.net_connections("tcp")):
                found.append(proc)
    return found


def test_r2_ssh_cut_mid_stream(hp, cluster):
    s = hp.launch("smollm2-135m", on="cluster", timeout=180)
    assert s.state == State.READY, (s.reason, s.log_tail)
    deltas: list[str] = []
    error: list[BaseException] = []
    cut = threading.Event()

    def consume() -> None:
        try:
            for text in hp.stream(s.id, "Write a long story about the sea.", max_tokens=400,
                                  temperature=0):
                deltas.append(text)
                if len(deltas) == 3:
                    victims = our_sshd_children(cluster.port)
                    for proc in victims:
                        proc.send_signal(signal.SIGKILL)
                    cut.set()
        except Exception as exc:  # what the user sees is the point
            error.append(exc)

    start = time.monotonic()
    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    assert cut.wait(60), "the stream never started"
    reader.join(STREAM_END_BOUND)
    hung = reader.is_alive()  # the stream neither went on nor ended: the reader waits
    ended = time.monotonic() - start
    if not hung:
        assert error, f"the stream went on after the cut ({len(deltas)} deltas)"
        assert str(error[0]) and "Traceback" not in str(error[0])
    after = until(lambda: (x := hp.status(s.id)).state == State.READY and not x.unreachable
                  and x, 30)
    assert after, hp.status(s.id)
    t0 = time.monotonic()
    answer = hp.prompt(s.id, "Say hi.", max_tokens=8)
    assert answer.strip()
    assert hp.status(s.id).state == State.READY
    assert not any(e["kind"] == "failed" for e in hp.events(s.id))
    record("R2", deltas_before_cut=len(deltas),
           stream_ended_after_s=None if hung else round(ended, 2),
           stream_still_hanging_after_s=round(ended, 1) if hung else None,
           error_type=type(error[0]).__name__ if error else None,
           error=str(error[0])[:200] if error else None,
           next_prompt_s=round(time.monotonic() - t0, 2), session_state=str(after.state))
    assert not hung, f"the stream did not end within {STREAM_END_BOUND} s of the SSH cut"


def test_r3_slurmctld_down_for_60s(hp, cluster):
    # One session: the test node has 2 CPUs, and a job asks for 2.
    sessions = [hp.launch("smollm2-135m", on="cluster", timeout=180)]
    assert all(s.state == State.READY for s in sessions), [s.reason for s in sessions]
    pid_file = Path(cluster.env["HPCSERVE_TEST_STATE_DIR"]) / "run" / "slurmctld.pid"
    down = time.monotonic()
    os.kill(int(pid_file.read_text()), signal.SIGTERM)
    try:
        seen = until(lambda: all(hp.status(s.id).unreachable for s in sessions), 30, 0.2)
        to_unreachable = time.monotonic() - down
        assert seen, [hp.status(s.id) for s in sessions]
        states_during = set()
        while time.monotonic() - down < 60:
            states_during |= {str(hp.status(s.id).state) for s in sessions}
            time.sleep(1)
        assert states_during == {"ready"}, states_during
    finally:
        subprocess.run(["bash", str(SCRIPT), "start"], check=True, capture_output=True)
    up = time.monotonic()
    back = until(lambda: all(not hp.status(s.id).unreachable for s in sessions), 60, 0.2)
    recovered = time.monotonic() - up
    assert back, [hp.status(s.id) for s in sessions]
    for s in sessions:
        assert hp.status(s.id).state == State.READY
        assert not any(e["kind"] == "failed" for e in hp.events(s.id))
        assert hp.prompt(s.id, "still there?", max_tokens=8).strip()
    record("R3", sessions=len(sessions), outage_s=round(up - down, 1),
           down_to_all_unreachable_s=round(to_unreachable, 2), failed=0,
           states_during_outage=sorted(states_during),
           restart_to_all_reachable_s=round(recovered, 2))
