"""The tapis-jobs target end to end through the real tapipy client: the stand-in's Jobs API
stages the app and runs the job for real on the test SLURM cluster (sbatch over sshd); the
engine (the real SmolLM2 on llama.cpp) is reached through an SSH tunnel via the login host."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import httpx
import pytest

from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.errors import HpcserveError
from hpcserve_jupyter.jobs import JobState
from hpcserve_jupyter.sessions import State
from job_inputs import chat_lines, write
from waiting import until

pytestmark = [pytest.mark.slurm, pytest.mark.model, pytest.mark.timeout(600)]
TARGET = "hpc"


def squeue(job_id: str) -> str:
    out = subprocess.run(["squeue", "--noheader", "--states=all", "-j", str(job_id), "-o",
                          "%T"], capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture
def hp(tapis_jobs_config):
    h = Hpcserve(poll_interval=1.0, target_configs={TARGET: tapis_jobs_config})
    yield h
    for s in h.sessions(live_only=True):
        with contextlib.suppress(HpcserveError):
            h.stop(s.id)
    for j in h.jobs(live_only=True):
        with contextlib.suppress(HpcserveError):
            h.cancel_job(j.id)
    h.close()


def tapis_job(standin, uuid: str) -> dict:
    """The job as the stand-in's Jobs API records it (what anyone listing it sees)."""
    return dict(standin.jobs.get(uuid).fields)


def test_session_queued_running_ready_prompt_cancel(hp, jobs_standin):
    states: list[str] = []
    s = hp.launch("smollm2-135m", on=TARGET, timeout=240,
                  progress=lambda x: states.append(f"{x.state}:{x.reason}"))
    assert s.state == State.READY, (s.reason, s.log_tail)
    assert states[0].startswith("pending") and any("QUEUED" in x or "STAGING" in x
                                                   for x in states), states
    uuid = s.handle["job_uuid"]
    record = tapis_job(jobs_standin, uuid)
    assert record["status"] == "RUNNING" and record["appId"] == "hpcserve-serve"
    assert squeue(record["remoteJobId"]) == "RUNNING"
    url = s.endpoints[0]
    assert url.startswith("http://127.0.0.1:")  # the local end of the SSH tunnel
    deltas = list(hp.stream(s.id, "Name a color.", max_tokens=16, temperature=0))
    assert len(deltas) > 2
    assert "chat/completions" in hp.logs(s.id, tail=80)
    # the engine wants the session's key, which never travelled in the job's record
    assert httpx.get(url + "/v1/models").status_code == 401
    key = hp.manager.api_key(s)
    assert key and key not in json.dumps(record)
    assert key not in json.dumps([c.body for c in jobs_standin.calls], default=str)
    stopped = hp.stop(s.id)
    assert stopped.state == State.STOPPED
    assert tapis_job(jobs_standin, uuid)["status"] == "CANCELLED"
    assert until(lambda: squeue(record["remoteJobId"]) in ("CANCELLED", ""), 30)
    assert key not in Path(hp.manager.home / "sessions.db").read_text(errors="ignore")


def test_batch_job_through_tapis_jobs(hp, jobs_standin, tapis_jobs_config,
                                      tmp_path):
    lines = chat_lines(4, 6, prefix="t")
    job = hp.submit_job("smollm2-135m", write(tmp_path / "in.jsonl", lines), on=TARGET,
                        concurrency=2, output=tmp_path / "out.jsonl")
    seen: list[str] = []
    final = job.wait(timeout=400, progress=lambda j: seen.append(str(j.state)))
    assert final.state == JobState.DONE, (final.reason, final.log_tail)
    assert (final.done, final.failed) == (4, 0)
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(x["custom_id"] for x in out) == [f"t{i}" for i in range(4)]
    assert all(x["response"]["status_code"] == 200 for x in out)
    record = tapis_job(jobs_standin, final.handle["job_uuid"])
    assert record["status"] == "FINISHED"
    # the input was staged by Tapis as fileInputs (the job record holds them as JSON text,
    # as the live service does), from hpcserve's private directory, which is gone now
    inputs = json.loads(record["fileInputs"])
    targets = sorted(i["targetPath"] for i in inputs)
    assert "input.jsonl" in targets and "hpcserve_jobrun.py" in targets
    assert all("/sessions/" + job.id + "/inputs/" in i["sourceUrl"] for i in inputs)
    assert not Path(tapis_jobs_config["storage_dir"], "sessions", job.id).exists()


def test_direct_mode_reaches_the_node_without_ssh(tapis_jobs_config):
    """`tunnel: direct` (Jupyter on the system itself): the node's own address, no SSH."""
    config = {**tapis_jobs_config, "tunnel": "direct", "ssh": {"host": "unused.invalid"}}
    h = Hpcserve(poll_interval=1.0, target_configs={TARGET: config})
    try:
        s = h.launch("smollm2-135m", on=TARGET, timeout=240)
        assert s.state == State.READY, (s.reason, s.log_tail)
        assert s.endpoints[0] == f"http://{s.handle['node']}:{s.handle['ports'][0]}"
        assert h.prompt(s.id, "Say hi", max_tokens=8) is not None
        assert h.stop(s.id).state == State.STOPPED
    finally:
        h.close()
