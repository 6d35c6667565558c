"""A manager killed with SIGKILL in the middle of a launch: after the target started the
engine / accepted the job, before the session record got its handle. A restarted manager must
adopt what runs (SLURM: the job, found by its name; Tapis: the pod, by the id derived from the
session) or cancel it (local: the marked process groups), and never leave it running unknown.
The manager is frozen at that exact point by wrapping the real target's launch in the child
process (the target itself is untouched)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import marked_processes, record, slurm_jobs, until
from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.sessions import State

pytestmark = [pytest.mark.model, pytest.mark.timeout(400)]

CHILD = textwrap.dedent("""
    import asyncio, json, sys
    from hpcserve_jupyter.api import Hpcserve
    configs, target = json.loads(sys.argv[1]), sys.argv[2]
    h = Hpcserve(poll_interval=0.5, target_configs=configs)
    tgt = h.manager.target(target)
    real = tgt.launch

    async def launch_then_freeze(req):
        handle = await real(req)  # the engine runs / the job is queued...
        print(json.dumps({"sid": req.session_id, "handle": handle}), flush=True)
        await asyncio.sleep(3600)  # ...and the manager dies before recording the handle

    tgt.launch = launch_then_freeze
    h.launch("smollm2-135m", on=target, wait=False)
""")


def _launch_and_kill(configs: dict, target: str) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(configs), target],
                            stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    return info


def test_local_launch_interrupted_is_cancelled(isolated_home):
    configs = {"local": {"kind": "local"}}
    info = _launch_and_kill(configs, "local")
    sid = info["sid"]
    assert until(lambda: sid in marked_processes(isolated_home), 5), "the engine should be running"
    h = Hpcserve(poll_interval=0.5, launch_grace=1.0, target_configs=configs)
    try:
        start = time.monotonic()
        s = until(lambda: (x := h.status(sid)).state.terminal and x, 15)
        took = time.monotonic() - start
        assert s and s.state == State.FAILED, s
        assert "nothing of it runs" in s.reason, s.reason
        left = until(lambda: sid not in marked_processes(isolated_home), 10)
        assert left, marked_processes(isolated_home)
        record("R-launch-kill", local_outcome="cancelled", local_orphans=0,
               local_restart_to_resolved_s=round(took, 2), launch_grace_s=1.0)
    finally:
        h.close()


def _restart_and_adopt(configs: dict, sid: str, handle: dict) -> tuple[Hpcserve, float]:
    """A new manager on the same state: the session becomes ready with the handle of what the
    killed launch started, and answers a prompt. Returns it (to stop) and the time taken."""
    h = Hpcserve(poll_interval=0.5, launch_grace=1.0, target_configs=configs)
    start = time.monotonic()
    s = h.wait(sid, timeout=180)
    took = time.monotonic() - start
    assert s.state == State.READY, (s.state, s.reason, s.log_tail)
    assert {k: s.handle.get(k) for k in handle} == handle
    assert "adopted" in [e["kind"] for e in h.events(sid)]
    assert h.prompt(sid, "Say hi.", max_tokens=8).strip()
    return h, took


def _stop_all(h: Hpcserve) -> None:
    for s in h.sessions(live_only=True):
        h.stop(s.id)
    h.close()


def test_slurm_launch_interrupted_is_adopted(slurm_config, cluster):
    configs = {"local": {"kind": "local"}, "cluster": slurm_config}
    info = _launch_and_kill(configs, "cluster")
    sid, name = info["sid"], info["handle"]["job_name"]
    assert name in slurm_jobs(cluster.user)
    h, took = _restart_and_adopt(configs, sid, {"job_id": info["handle"]["job_id"]})
    try:
        assert h.stop(sid).state == State.STOPPED
        assert until(lambda: name not in slurm_jobs(cluster.user), 30)
        record("R-launch-kill", slurm_outcome="adopted", slurm_orphans=0,
               slurm_restart_to_ready_s=round(took, 2))
    finally:
        _stop_all(h)


def test_tapis_launch_interrupted_is_adopted(pods_config, standin):
    configs = {"local": {"kind": "local"}, "pods": pods_config}
    info = _launch_and_kill(configs, "pods")
    assert info["handle"]["pod_id"] in standin.pods  # created at the Pods API, not recorded
    # found again by the pod id derived from the session
    h, took = _restart_and_adopt(configs, info["sid"], info["handle"])
    try:
        assert h.stop(info["sid"]).state == State.STOPPED
        assert not standin.pods and not standin.volumes  # checked at the Pods API
        record("R-launch-kill", tapis_outcome="adopted", tapis_orphans=0,
               tapis_restart_to_ready_s=round(took, 2))
    finally:
        _stop_all(h)


def test_tapis_jobs_launch_interrupted_is_adopted(tapis_jobs_config, jobs_standin):
    configs = {"local": {"kind": "local"}, "hpc": tapis_jobs_config}
    info = _launch_and_kill(configs, "hpc")
    uuid, name = info["handle"]["job_uuid"], info["handle"]["job_name"]
    assert uuid in jobs_standin.jobs.jobs  # submitted to the Jobs API, not recorded
    # found again by the job's name (hpcserve-NAME-ID)
    h, took = _restart_and_adopt(configs, info["sid"], {"job_uuid": uuid, "job_name": name})
    try:
        assert h.stop(info["sid"]).state == State.STOPPED
        assert jobs_standin.jobs.get(uuid).status == "CANCELLED"  # checked at the Jobs API
        live = [j.uuid for j in jobs_standin.jobs.jobs.values()
                if j.status not in ("FINISHED", "FAILED", "CANCELLED")]
        remote = str(jobs_standin.jobs.get(uuid).fields["remoteJobId"])
        assert live == [] and until(lambda: not subprocess.run(
            ["squeue", "--noheader", "-j", remote], capture_output=True, text=True
        ).stdout.strip(), 30)  # and gone from SLURM's queue
        record("R-launch-kill", tapis_jobs_outcome="adopted", tapis_jobs_orphans=len(live),
               tapis_jobs_restart_to_ready_s=round(took, 2))
    finally:
        _stop_all(h)
