"""The test cluster's settings (scripts/testcluster.sh env) for benchmarks that use it."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "testcluster.sh"


def cluster_env() -> dict[str, str]:
    subprocess.run(["bash", str(SCRIPT), "start"], check=True, capture_output=True)
    out = subprocess.run(["bash", str(SCRIPT), "env"], check=True, capture_output=True,
                         text=True).stdout
    env = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export":
            key, _, value = words[1].partition("=")
            env[key] = value
    return env


def slurm_config(env: dict[str, str]) -> dict[str, object]:
    return {"host": env["HPCSERVE_TEST_SSH_HOST"], "port": int(env["HPCSERVE_TEST_SSH_PORT"]),
            "user": env["HPCSERVE_TEST_SSH_USER"], "key": env["HPCSERVE_TEST_SSH_KEY"],
            "known_hosts": env["HPCSERVE_TEST_SSH_KNOWN_HOSTS"], "ssh_config": None,
            "use_agent": False, "partition": env["HPCSERVE_TEST_SLURM_PARTITION"],
            "python": env["HPCSERVE_TEST_REMOTE_PYTHON"]}
