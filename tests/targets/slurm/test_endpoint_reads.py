"""The endpoints of running jobs are read with one remote command per poll, whatever their
number (an SFTP read each made a tick with 200 starting jobs take seconds: p3_slurm_tick)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import pytest

from hpcserve_jupyter.targets.slurm.target import SlurmTarget

pytestmark = pytest.mark.slurm


@pytest.fixture
def target(cluster: Any) -> Any:
    config = {"host": cluster.host, "port": cluster.port, "user": cluster.user,
              "key": str(cluster.key), "known_hosts": str(cluster.known_hosts),
              "ssh_config": None, "use_agent": False,
              "workdir": f"~/.hpcserve-test-endpoints-{secrets.token_hex(4)}"}
    t = SlurmTarget("cluster", config)
    yield t
    t.shell().run(["rm", "-rf", t.base_dir()], check=False)


def test_one_command_reads_every_published_endpoint(target, monkeypatch):
    shell = target.shell()
    base = target.base_dir()
    handles, want = [], {}
    for i in range(30):
        workdir = f"{base}/sessions/s{i:02d}"
        shell.run(["mkdir", "-p", workdir])
        handles.append({"job_id": str(i), "workdir": workdir})
        if i % 3 == 0:  # published, as the job script writes it
            shell.write_file(f"{workdir}/endpoint.json",
                             json.dumps({"node": f"node{i}", "ports": [9000 + i, 9100 + i]}) + "\n")
            want[workdir] = (f"node{i}", [9000 + i, 9100 + i])
        elif i % 3 == 1:  # a directory in its place, or garbage: not published
            shell.run(["mkdir", f"{workdir}/endpoint.json"] if i % 2 else
                      ["sh", "-c", f"echo 'not json' > {workdir}/endpoint.json"])
    calls: dict[str, int] = {"run": 0, "read_file": 0}

    def counted(name: str) -> Any:
        original = getattr(shell, name)

        def call(*args: Any, **kw: Any) -> Any:
            calls[name] += 1
            return original(*args, **kw)
        return call

    for name in calls:
        monkeypatch.setattr(shell, name, counted(name))
    assert target._read_endpoints(handles) == want
    assert calls == {"run": 1, "read_file": 0}
    assert target._read_endpoints([]) == {}
    assert calls == {"run": 1, "read_file": 0}  # nothing to read: nothing sent


def test_poll_publishes_the_endpoint_of_a_running_job(target):
    """A real job that writes endpoint.json: the poll that sees it reports the ports (to be
    kept in the handle) and the URL of the tunnel to them."""
    shell = target.shell()
    workdir = f"{target.base_dir()}/sessions/job"
    shell.run(["mkdir", "-p", workdir])
    job = shell.run(["sbatch", "--parsable", "--partition=debug", f"--chdir={workdir}",
                     "--output=/dev/null", "--cpus-per-task=1", "--time=5", "--wrap",
                     'printf \'{"node": "%s", "ports": [1]}\\n\' "$(hostname)" > endpoint.json'
                     "; sleep 120"]).stdout.strip().split(";")[0]
    handle = {"job_id": job, "workdir": workdir}
    update = None
    try:
        deadline = time.monotonic() + 120
        while update is None and time.monotonic() < deadline:
            status = asyncio.run(target.poll({"s": handle}))["s"]
            update = status.handle_update
            time.sleep(0 if update else 0.5)
        assert update and update["ports"] == [1], status
        assert status.endpoints and status.endpoints[0].startswith("http://127.0.0.1:")
        handle.update(update)  # known ports: the next poll reads nothing
        assert asyncio.run(target.poll({"s": handle}))["s"].endpoints == status.endpoints
    finally:
        shell.run(["scancel", job], check=False)
        if update:
            shell.close_tunnel(update["node"], 1)
