"""The remote targets' fixtures for tests outside tests/targets/: the real SLURM + sshd test
cluster and the Tapis Pods stand-in with its pod proxy, loaded from the conftest.py files that
define them (a conftest is not importable by name), plus the configs a targets.yaml takes.

Import the fixtures into a test module: `from target_fixtures import cluster, ...`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent


def _load_conftest(kind: str) -> Any:
    name = f"hpcserve_{kind}_conftest"  # the name tests/reliability/conftest.py uses too
    if name in sys.modules:
        return sys.modules[name]
    folder = TESTS / "targets" / kind
    sys.path.insert(0, str(folder))  # its helper modules
    spec = importlib.util.spec_from_file_location(name, folder / "conftest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


_slurm = _load_conftest("slurm")
_tapis = _load_conftest("tapis")
cluster = _slurm.cluster  # session scope: starts (or finds running) the test cluster
standin, pod_proxy, pods_config = _tapis.standin, _tapis.pod_proxy, _tapis.pods_config
__all__ = ["cluster", "jobs_standin", "pod_proxy", "pods_config", "slurm_config", "standin",
           "tapis_jobs_config"]


@pytest.fixture
def slurm_config(cluster: Any) -> dict[str, Any]:
    """The test cluster as a `slurm` target reached over the real sshd."""
    return {"kind": "slurm", "host": cluster.host, "port": cluster.port, "user": cluster.user,
            "key": str(cluster.key), "known_hosts": str(cluster.known_hosts),
            "ssh_config": None, "use_agent": False, "partition": "debug",
            "python": cluster.env["HPCSERVE_TEST_REMOTE_PYTHON"], "stop_timeout": 30}


# ---------------------------------------------------------------- Tapis Jobs on the test cluster

JOBS_PASSWORD_ENV = "HPCSERVE_TEST_TAPIS_JOBS_PASSWORD"


@pytest.fixture
def jobs_standin(cluster: Any, tmp_path: Path) -> Any:
    """The Tapis stand-in with the Jobs, Apps, Systems and Files APIs, whose execution system
    is the test cluster: submitted jobs run for real through sshd and SLURM. Its queue admits
    what the recipes ask for (a model's memory, hours)."""
    from tapis_standin.conftest import jobs_standin_on

    with jobs_standin_on(tmp_path / "jobs-standin", cluster.env, max_cores_per_node=8,
                         max_memory_mb=16384, max_minutes=240) as server:
        yield server


@pytest.fixture
def tapis_jobs_config(jobs_standin: Any, cluster: Any, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A `tapis-jobs` target on the stand-in: credentials by variable name, the tunnel through
    the test sshd, files in a directory of the test user's own."""
    import pwd

    from tapis_standin.conftest import PASSWORD, USERNAME

    monkeypatch.setenv(JOBS_PASSWORD_ENV, PASSWORD)
    home = pwd.getpwnam(cluster.user).pw_dir
    storage = Path(home, "hpcserve-tapis", tmp_path.name)
    yield {
        "kind": "tapis-jobs", "base_url": jobs_standin.base_url,
        "tenant_id": jobs_standin.tenant_id, "username": USERNAME,
        "password_env": JOBS_PASSWORD_ENV, "token_env": "HPCSERVE_TEST_TAPIS_JOBS_TOKEN",
        "keyring_service": None, "prompt": False, "request_timeout": 10,
        "system_id": "testcluster", "queue": "normal",
        "storage_dir": str(storage),
        "python": cluster.env["HPCSERVE_TEST_REMOTE_PYTHON"], "stop_timeout": 60,
        "tunnel": "ssh",
        "ssh": {"key": str(cluster.key), "known_hosts": str(cluster.known_hosts),
                "ssh_config": None, "use_agent": False},
    }
    shutil.rmtree(storage, ignore_errors=True)  # the app bundle; private dirs go with jobs
    with contextlib.suppress(OSError):  # the last test's
        storage.parent.rmdir()
