"""Shared fixtures. Every test gets its own state directory and target file (no user config).

The embedded facade as a fixture (`hp = facade_fixture(scope="module")`) is in
facade_fixtures.py: a conftest is not importable by name when several exist."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# LiteLLM (jupyter-ai's, in test servers too) fetches its cost map from GitHub at import, with
# retries (seconds each time): no network here, and its bundled copy is what tests want.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HPCSERVE_HOME, the targets file and the user recipe dir all point into tmp_path."""
    home = tmp_path / "hpcserve-home"
    monkeypatch.setenv("HPCSERVE_HOME", str(home))
    monkeypatch.setenv("HPCSERVE_TARGETS", str(tmp_path / "targets.yaml"))
    monkeypatch.setenv("HPCSERVE_RECIPES", "")
    (tmp_path / "user").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return home


@pytest.fixture
def run_cli(tmp_path: Path):
    """Run the real `hpcserve` console script in a subprocess with the test's environment."""
    exe = Path(sys.executable).with_name("hpcserve")

    def run(*args: str, timeout: float = 120, input: str | None = None):
        return subprocess.run([str(exe), *args], capture_output=True, text=True,
                              timeout=timeout, env=dict(os.environ), input=input)

    return run
