"""The remote targets' fixtures for tests outside tests/targets/: the real SLURM + sshd test
cluster and the Tapis Pods stand-in with its pod proxy, loaded from the conftest.py files that
define them (a conftest is not importable by name), plus the configs a targets.yaml takes.

Import the fixtures into a test module: `from target_fixtures import cluster, ...`.
"""

from __future__ import annotations

import importlib.util
import sys
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
__all__ = ["cluster", "pod_proxy", "pods_config", "slurm_config", "standin"]


@pytest.fixture
def slurm_config(cluster: Any) -> dict[str, Any]:
    """The test cluster as a `slurm` target reached over the real sshd."""
    return {"kind": "slurm", "host": cluster.host, "port": cluster.port, "user": cluster.user,
            "key": str(cluster.key), "known_hosts": str(cluster.known_hosts),
            "ssh_config": None, "use_agent": False, "partition": "debug",
            "python": cluster.env["HPCSERVE_TEST_REMOTE_PYTHON"], "stop_timeout": 30}
