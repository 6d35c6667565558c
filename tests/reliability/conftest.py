"""Reliability tests (GitHub issue 8): real engines, real `jupyter server` subprocesses killed
with SIGKILL, the real SLURM + sshd test cluster. Each test records its figures (R1..R11) in
the JSON file named by $HPCSERVE_RELIABILITY_OUT, which `make reliability`
(benchmarks/reliability.py) sets and then publishes as benchmarks/results/reliability.json.
Without it (a test run alone, `make test`) they go to a scratch file in the temp directory, so
running tests never rewrites a tracked file."""

from __future__ import annotations

import importlib.util
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

__all__ = ["TOKEN", "JupyterServer", "free_port", "wait_ready"]
FIGURES = Path(os.environ.get("HPCSERVE_RELIABILITY_OUT")
               or Path(tempfile.gettempdir()) / f"hpcserve-reliability-figures-{os.getuid()}.json")


def _load_conftest(kind: str) -> Any:
    """The fixtures of tests/targets/<kind>/conftest.py (not importable by name)."""
    folder = REPO / "tests" / "targets" / kind
    sys.path.insert(0, str(folder))  # its helper modules
    spec = importlib.util.spec_from_file_location(f"hpcserve_{kind}_conftest",
                                                  folder / "conftest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


_slurm = _load_conftest("slurm")
cluster = _slurm.cluster  # the session-scoped fixture starting (or finding) the test cluster
_tapis = _load_conftest("tapis")
# The Tapis Pods stand-in (driven through real tapipy), the proxy to its pods, the target config.
standin, pod_proxy, pods_config = _tapis.standin, _tapis.pod_proxy, _tapis.pods_config


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


def until(pred: Any, timeout: float, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return pred()


def remote_target(request: pytest.FixtureRequest, kind: str) -> tuple[dict[str, Any], Any]:
    """For tests run on both remote targets: the config of `kind` ("slurm": the test cluster,
    "tapis": the Pods stand-in) and what tells the target's truth (the cluster / the stand-in)."""
    if kind == "slurm":
        return request.getfixturevalue("slurm_config"), request.getfixturevalue("cluster")
    return request.getfixturevalue("pods_config"), request.getfixturevalue("standin")


@pytest.fixture
def slurm_config(cluster: Any) -> dict[str, Any]:
    return {"kind": "slurm", "host": cluster.host, "port": cluster.port, "user": cluster.user,
            "key": str(cluster.key), "known_hosts": str(cluster.known_hosts),
            "ssh_config": None, "use_agent": False, "partition": "debug",
            "python": cluster.env["HPCSERVE_TEST_REMOTE_PYTHON"], "stop_timeout": 30}
