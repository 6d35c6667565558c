"""Fixtures: a running stand-in and a real tapipy client logged into it; for the Jobs API, a
stand-in whose execution system is the real test cluster (``scripts/testcluster.sh``)."""

from __future__ import annotations

import contextlib
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testcluster_env import start_cluster

from .server import StandIn
from .slurm_exec import ExecSystem, SSHHost

USERNAME = "testuser"
PASSWORD = "testpass"


@pytest.fixture
def standin(tmp_path) -> Iterator[StandIn]:
    with StandIn(workdir=tmp_path / "standin", users={USERNAME: PASSWORD},
                 phase_seconds=0.3, stop_grace_seconds=3.0) as server:
        yield server


@pytest.fixture
def tapis(standin: StandIn):
    """A real ``tapipy.tapis.Tapis`` client with a user token from the stand-in."""
    from tapipy.tapis import Tapis

    client = Tapis(base_url=standin.base_url, tenant_id="tacc", username=USERNAME,
                   password=PASSWORD)
    client.get_tokens()
    return client


# ------------------------------------------------------------------------- the SLURM cluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slurm: needs the real test cluster of scripts/testcluster.sh (SLURM and "
                   "sshd on 127.0.0.1; root to start it)")


@pytest.fixture(scope="session")
def cluster_env() -> dict[str, str]:
    """`scripts/testcluster.sh start` (idempotent) and its `env` exports (HPCSERVE_TEST_*)."""
    return start_cluster()


@contextlib.contextmanager
def jobs_standin_on(workdir: Path, cluster_env: dict[str, str],
                    **limits: Any) -> Iterator[StandIn]:
    """A running stand-in whose Systems/Files/Jobs routes act on the test cluster, with a
    jobWorkingDir of its own under the test user's home (removed afterwards); stopping it
    scancels every SLURM job it still tracks, even when the test failed. `limits`: the
    logical queue's (ExecSystem.from_testcluster)."""
    work = f"standin-tests/{uuid.uuid4().hex[:12]}"
    system = ExecSystem.from_testcluster(cluster_env, job_working_dir=f"HOST_EVAL($HOME)/{work}",
                                         **limits)
    try:
        with StandIn(workdir=workdir, users={USERNAME: PASSWORD}, exec_system=system,
                     job_poll_seconds=0.3, stop_grace_seconds=3.0) as server:
            yield server
    finally:
        host = SSHHost(system)
        try:
            host.run(f"rm -rf \"$HOME\"/{shlex.quote(work)}; "
                     'rmdir --ignore-fail-on-non-empty "$HOME"/standin-tests')
        finally:
            host.close()


@pytest.fixture
def jobs_standin(tmp_path, cluster_env) -> Iterator[StandIn]:
    """A stand-in whose Systems/Files/Jobs routes act on the test cluster (see
    jobs_standin_on)."""
    with jobs_standin_on(tmp_path / "standin", cluster_env, max_minutes=10) as server:
        yield server


@pytest.fixture
def jtapis(jobs_standin: StandIn):
    """A real tapipy client logged into ``jobs_standin``."""
    from tapipy.tapis import Tapis

    client = Tapis(base_url=jobs_standin.base_url, tenant_id="tacc", username=USERNAME,
                   password=PASSWORD)
    client.get_tokens()
    return client
