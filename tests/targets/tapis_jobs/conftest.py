"""The tapis-jobs tests use the stand-in's Jobs API on the real test cluster (fixtures in
tests/target_fixtures.py)."""

from __future__ import annotations

import pytest

from target_fixtures import cluster, jobs_standin, tapis_jobs_config  # noqa: F401 (fixtures)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slurm: needs the real test cluster of scripts/testcluster.sh (SLURM and "
                   "sshd on 127.0.0.1; root to start it)")
