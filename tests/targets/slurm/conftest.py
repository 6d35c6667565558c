"""The real test cluster (SLURM + sshd on 127.0.0.1) that the SLURM target tests run against.

`scripts/testcluster.sh start` is idempotent: the first session on a machine sets the cluster up
(about 15 s with the package install), later sessions find it running.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcserve_jupyter.targets.slurm.sshconfig import SSHSettings
from testcluster_env import start_cluster

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "testcluster.sh"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slurm: needs the real test cluster of scripts/testcluster.sh (SLURM and "
                   "sshd on 127.0.0.1; root to start it)")


@dataclass(frozen=True)
class ClusterEnv:
    """What `testcluster.sh env` exports, with a factory for isolated SSH settings."""

    env: dict[str, str]

    def path(self, name: str) -> Path:
        return Path(self.env[name])

    @property
    def host(self) -> str:
        return self.env["HPCSERVE_TEST_SSH_HOST"]

    @property
    def port(self) -> int:
        return int(self.env["HPCSERVE_TEST_SSH_PORT"])

    @property
    def user(self) -> str:
        return self.env["HPCSERVE_TEST_SSH_USER"]

    @property
    def key(self) -> Path:
        return self.path("HPCSERVE_TEST_SSH_KEY")

    @property
    def passphrase_key(self) -> Path:
        return self.path("HPCSERVE_TEST_SSH_KEY_PASSPHRASE")

    @property
    def passphrase(self) -> str:
        return self.path("HPCSERVE_TEST_SSH_KEY_PASSPHRASE_FILE").read_text().strip()

    @property
    def known_hosts(self) -> Path:
        return self.path("HPCSERVE_TEST_SSH_KNOWN_HOSTS")

    @property
    def host_key_line(self) -> str:
        """`type base64` of the sshd host key, as known_hosts records it."""
        return " ".join(self.path("HPCSERVE_TEST_SSH_HOST_KEY_PUB").read_text().split()[:2])

    def settings(self, **overrides: object) -> SSHSettings:
        """Settings for the test sshd that ignore the developer's ~/.ssh and ssh-agent."""
        values: dict[str, object] = {
            "host": self.host, "port": self.port, "user": self.user,
            "key_file": str(self.key), "known_hosts_file": str(self.known_hosts),
            "ssh_config_file": None, "user_known_hosts_file": None, "use_agent": False,
            "connect_timeout": 10.0, "reconnect_attempts": 3, "reconnect_backoff": 0.2,
        }
        values.update(overrides)
        return SSHSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def cluster() -> ClusterEnv:
    """Start (or find running) the test cluster once per session; it is left running."""
    return ClusterEnv(start_cluster())
