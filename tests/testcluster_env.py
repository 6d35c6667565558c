"""Starting the real test cluster (scripts/testcluster.sh: SLURM and sshd on 127.0.0.1) and
reading its exports: shared by the SLURM target's fixtures and the Tapis stand-in's Jobs API,
which runs jobs on the same cluster."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "testcluster.sh"


def parse_exports(text: str) -> dict[str, str]:
    """`export NAME=value` lines (shell-quoted) -> {NAME: value}."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            env[name] = value
    return env


def start_cluster() -> dict[str, str]:
    """`testcluster.sh start` (idempotent; skipped without root) and its HPCSERVE_TEST_*
    exports."""
    if os.geteuid() != 0:
        pytest.skip("the test cluster needs root: run `sudo scripts/testcluster.sh start` "
                    "and the tests as root")
    start = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True,
                           timeout=900, check=False)
    if start.returncode != 0:
        pytest.fail(f"scripts/testcluster.sh start failed:\n{start.stdout}\n{start.stderr}")
    exported = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True,
                              timeout=60, check=True)
    return parse_exports(exported.stdout)
