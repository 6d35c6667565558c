"""Time left on the real SLURM test cluster: a `--time 10` job's time left is SLURM's own
(`squeue %L`, asked here independently) within a tick, it counts down, an `expiring` event
arrives once with a warning longer than the job; extending is refused with SLURM's own words for
the cluster's normal user and done by an operator (root on the cluster itself: a `host: local`
SLURM target), after which the session follows SLURM's new limit."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.errors import BadInput
from hpcserve_jupyter.sessions import State
from hpcserve_jupyter.targets import target_class
from hpcserve_jupyter.targets.slurm.states import slurm_seconds
from target_fixtures import slurm_config

__all__ = ["slurm_config"]

pytestmark = [pytest.mark.slurm, pytest.mark.model, pytest.mark.timeout(400)]
TICK = 0.5


def squeue(job: str, fmt: str) -> str:
    """What SLURM itself says of the job (as root, on this machine: the cluster's host)."""
    return subprocess.run(["squeue", "-h", "-j", job, "-o", fmt], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_time_left_follows_slurm_warns_once_and_extends_as_operator(slurm_config):
    hp = Hpcserve(poll_interval=TICK, expiry_warning=900,  # more than the job has
                  target_configs={"cluster": slurm_config})
    sub = hp.watch(snapshot=False)
    try:
        s = hp.launch("smollm2-135m", on="cluster", time="10m", max_lifetime="off", cpus=1,
                      timeout=180)
        assert s.state == State.READY, (s.reason, s.log_tail)
        job = s.handle["job_id"]
        hp.refresh()
        mine = hp.status(s.id).public()
        truth = slurm_seconds(squeue(job, "%L"))
        assert mine["time_limit_s"] == 600 == slurm_seconds(squeue(job, "%l"))
        # within a tick (plus the slack an end time may move before it is rewritten)
        assert abs(mine["time_left_s"] - truth) <= 2 * TICK + 5 + 1, (mine, truth)
        time.sleep(2.5)
        later = hp.status(s.id).public()
        assert later["time_left_s"] < mine["time_left_s"]
        assert later["ends_at"] == mine["ends_at"]

        notices = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(notices) < 1:
            event = sub.get(timeout=0.5)
            if event and event["type"] == "expiring" and event["session"]["id"] == s.id:
                notices.append(event)
        time.sleep(3 * TICK)  # a few more ticks: any repeat would come now
        kinds = [e["kind"] for e in hp.manager.events(s.id)]
        assert len(notices) == 1 and kinds.count("expiring") == 1, kinds

        # the cluster's normal user may not raise a time limit: SLURM's own answer
        with pytest.raises(BadInput) as err:
            hp.extend(s.id, "10m")
        assert "SLURM refused" in err.value.message and "ccess" in err.value.message
        assert squeue(job, "%l") == "10:00"  # nothing changed
        # an operator may: root on the cluster's own host (a `host: local` target)
        admin = target_class("slurm")("admin", {"host": "local", "partition": "debug"})
        said = asyncio.run(admin.extend(s.handle, 600))
        assert slurm_seconds(squeue(job, "%l")) == 1200, said
        hp.refresh()
        grown = hp.status(s.id).public()
        assert grown["time_limit_s"] == 1200
        assert grown["time_left_s"] > later["time_left_s"] + 500
        hp.stop(s.id)
    finally:
        sub.close()
        for x in hp.sessions(live_only=True):
            hp.stop(x.id)
        hp.close()
