"""One-off batch jobs on the real test cluster: the input uploaded over SFTP into the job's
directory, one sbatch job that starts the engine, answers the file and ends, the queue reason
shown while it waits, progress read from the job's directory, the output read back; cancel
keeps the partial output. Real sshd, real SLURM, the real SmolLM2 engine on the node."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.errors import HpcserveError
from hpcserve_jupyter.jobs import JobState
from job_inputs import chat_lines as _chat_lines
from job_inputs import write
from waiting import until


def chat_lines(n: int, max_tokens: int) -> list[dict]:
    return _chat_lines(n, max_tokens, prefix="c")


pytestmark = [pytest.mark.slurm, pytest.mark.model, pytest.mark.timeout(600)]


@pytest.fixture
def hp(cluster, tmp_path):
    base = {"kind": "slurm", "host": cluster.host, "port": cluster.port, "user": cluster.user,
            "key": str(cluster.key), "known_hosts": str(cluster.known_hosts),
            "ssh_config": None, "use_agent": False, "partition": "debug",
            "python": cluster.env["HPCSERVE_TEST_REMOTE_PYTHON"], "stop_timeout": 30}
    h = Hpcserve(poll_interval=1.0, target_configs={
        "cluster": base, "held": {**base, "sbatch_extra": ["--hold"]}})
    yield h
    for j in h.jobs(live_only=True):
        with contextlib.suppress(HpcserveError):
            h.cancel_job(j.id)
    h.close()


def test_batch_job_runs_as_one_sbatch_job(hp, tmp_path):
    lines = chat_lines(6, max_tokens=6)
    job = hp.submit_job("smollm2-135m", write(tmp_path / "in.jsonl", lines), on="held",
                        concurrency=2, output=tmp_path / "out.jsonl")
    job_id = job.handle["job_id"]
    # Held in the queue: the job shows SLURM's reason while it waits.
    pending = until(lambda: (j := hp.job_status(job.id)).reason and j, 60)
    assert pending.state == JobState.PENDING and "JobHeldUser" in pending.reason
    subprocess.run(["scontrol", "release", job_id], check=True)
    seen: list[str] = []
    final = job.wait(timeout=400, progress=lambda j: seen.append(str(j.state)))
    assert final.state == JobState.DONE, (final.reason, final.log_tail)
    assert "running" in seen and (final.done, final.failed) == (6, 0)
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(x["custom_id"] for x in out) == [f"c{i}" for i in range(6)]
    assert all(x["response"]["status_code"] == 200 for x in out)
    assert stat.S_IMODE(os.stat(tmp_path / "out.jsonl").st_mode) == 0o600
    # What ran on the node: the staged files in the job's own directory, private.
    workdir = Path(final.handle["workdir"])
    assert workdir.parent.name == "jobs"
    for name in ("input.jsonl", "job.json", "hpcserve_jobrun.py", "output.jsonl"):
        assert stat.S_IMODE((workdir / name).stat().st_mode) == 0o600, name
    engine_log = (workdir / "engine.log").read_text(errors="replace")
    assert engine_log.count('"POST /v1/chat/completions') == 6
    # One sbatch job: it ended by itself once the file was answered.
    state = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
                           capture_output=True, text=True).stdout.split()
    squeue = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
    assert (state[:1] == ["COMPLETED"]) or job_id not in squeue.stdout
    assert "hpcserve: an engine exited with code 0" in \
        (workdir / f"slurm-{job_id}.out").read_text()


def test_cancel_on_the_cluster_keeps_the_partial_output(hp, tmp_path):
    job = hp.submit_job("smollm2-135m", write(tmp_path / "long.jsonl", chat_lines(60, 48)),
                        on="cluster", concurrency=1)
    assert until(lambda: hp.job_status(job.id).done >= 2, 300)
    cancelled = hp.cancel_job(job.id)
    assert cancelled.state == JobState.CANCELLED, cancelled.reason
    out = [json.loads(x) for x in Path(cancelled.output).read_text().splitlines()]
    assert 2 <= len(out) < 60
    assert len({x["custom_id"] for x in out}) == len(out)
    squeue = subprocess.run(["squeue", "-h", "-j", cancelled.handle["job_id"]],
                            capture_output=True, text=True).stdout
    assert "RUNNING" not in squeue  # the allocation is given back


def test_task_recipe_on_the_cluster(hp, tmp_path):
    source = tmp_path / "docs"
    source.mkdir()
    for i in range(3):
        (source / f"f{i}.txt").write_text(f"document number {i} " * (i + 1))
    job = hp.submit_job("embed-files", source, on="cluster", output=tmp_path / "vectors")
    final = job.wait(timeout=400)
    assert final.state == JobState.DONE, (final.reason, final.log_tail)
    assert (final.done, final.total) == (3, 3)
    files = sorted(p.name for p in (tmp_path / "vectors").iterdir())
    assert files == ["f0.txt.json", "f1.txt.json", "f2.txt.json"]
    for name in files:
        data = json.loads((tmp_path / "vectors" / name).read_text())
        assert len(data["embedding"]) == 576 and data["file"] == name[:-5]
    # The input went up as one zip, unpacked on the node inside the job's directory.
    workdir = Path(final.handle["workdir"])
    assert sorted(p.name for p in (workdir / "input").iterdir()) == \
        ["f0.txt", "f1.txt", "f2.txt"]
