"""Reliability tests (GitHub issue 8): real engines, real `jupyter server` subprocesses killed
with SIGKILL, the real SLURM + sshd test cluster. Each test records its figures (R1..R11) in
the JSON file named by $HPCSERVE_RELIABILITY_OUT, which `make reliability`
(benchmarks/reliability.py) sets and then publishes as benchmarks/results/reliability.json.
Without it (a test run alone, `make test`) they go to a scratch file in the temp directory, so
running tests never rewrites a tracked file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "jupyter"))
from test_jupyter_real_server import TOKEN, JupyterServer, free_port, wait_ready  # noqa: E402

from hpcserve_jupyter.targets.local import SESSION_MARK  # noqa: E402

# The remote targets' fixtures (the SLURM + sshd test cluster, the Tapis Pods stand-in, their
# target configs), shared with the other tests that use them.
from target_fixtures import (  # noqa: E402, F401
    cluster,
    jobs_standin,
    pod_proxy,
    pods_config,
    slurm_config,
    standin,
    tapis_jobs_config,
)
from waiting import until  # noqa: E402, F401  (tests import it from here)

__all__ = ["TOKEN", "JupyterServer", "free_port", "wait_ready"]
FIGURES = Path(os.environ.get("HPCSERVE_RELIABILITY_OUT")
               or Path(tempfile.gettempdir()) / f"hpcserve-reliability-figures-{os.getuid()}.json")


def record(figure: str, **values: Any) -> None:
    """Merge this test's measurements into the figures file (read by benchmarks/reliability.py)."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(FIGURES.read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault(figure, {}).update(values, recorded_at=time.time())
    tmp = FIGURES.with_name(f"{FIGURES.name}.{os.getpid()}.tmp")  # parallel runs never share it
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, FIGURES)


class KillableServer(JupyterServer):
    """The real `jupyter server` of tests/jupyter, which can also be killed with SIGKILL."""

    def kill9(self) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.sigterm()


def marked_processes(*under: Path) -> dict[str, list[int]]:
    """Live processes carrying a session's mark, by session id (the target's truth); only
    those working in one of the `under` directories when given (engines run in their session
    directory), as other state directories on this machine (a `make demo`...) are not ours."""
    roots = [str(Path(u).resolve()) + os.sep for u in under]
    found: dict[str, list[int]] = {}
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            sid = proc.environ().get(SESSION_MARK)
            if sid and roots and not (proc.cwd() + os.sep).startswith(tuple(roots)):
                continue
        except psutil.Error:
            continue
        if sid:
            found.setdefault(sid, []).append(proc.pid)
    return found


def slurm_jobs(user: str) -> dict[str, str]:
    """Live jobs of the test cluster's user: job name -> state (what squeue says)."""
    out = subprocess.run(["squeue", "--noheader", "-u", user, "-o", "%j|%T"],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("|", 1) for line in out.split() if "|" in line)


def remote_target(request: pytest.FixtureRequest, kind: str) -> tuple[dict[str, Any], Any]:
    """For tests run on the remote targets: the config of `kind` ("slurm": the test cluster,
    "tapis": the Pods stand-in, "tapis-jobs": the stand-in's Jobs API on the test cluster) and
    what tells the target's truth (the cluster / the stand-in)."""
    if kind == "slurm":
        return request.getfixturevalue("slurm_config"), request.getfixturevalue("cluster")
    if kind == "tapis-jobs":
        return (request.getfixturevalue("tapis_jobs_config"),
                request.getfixturevalue("jobs_standin"))
    return request.getfixturevalue("pods_config"), request.getfixturevalue("standin")


