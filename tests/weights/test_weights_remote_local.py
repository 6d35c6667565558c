"""The SLURM target's weights commands with `host: local` (its shell runs here, no SSH and no
SLURM needed): the CLI's remote path, its progress, the cache the target's env: names, errors.
The real cluster over SSH: test_weights_slurm.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli_errors import one_line_error
from hf_standin.conftest import hf_hub, repo_folders
from hf_standin.fixtures import GATED, TINY, TOKEN, use_recipes
from hf_standin.server import HubStandIn

__all__ = ["hf_hub", "repo_folders"]
pytest.importorskip("huggingface_hub")
RECIPES = {"tiny-hf": {"model": TINY, "backends": ["vllm", "transformers"]},
           "gated-hf": {"model": GATED, "backends": ["vllm"]}}


@pytest.fixture
def box(hf_hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    use_recipes(monkeypatch, tmp_path / "recipes", RECIPES)
    config = {"kind": "slurm", "host": "local", "python": sys.executable,
              "workdir": str(tmp_path / "remote-work"),
              "env": {"HF_HUB_CACHE": str(tmp_path / "remote-cache"), "HF_ENDPOINT": hf_hub.url}}
    Path(os.environ["HPCSERVE_TARGETS"]).write_text(yaml.safe_dump({"targets": {"box": config}}))
    return config


def test_pull_list_rm_through_the_targets_shell(box, hf_hub: HubStandIn, run_cli, tmp_path,
                                                monkeypatch):
    proc = run_cli("pull", "tiny-hf", "--on", "box")
    assert proc.returncode == 0, proc.stderr
    commit = hf_hub.repos[TINY].revisions["main"].commit
    snapshot = tmp_path / "remote-cache" / "models--hpcserve-test--tiny-model" / "snapshots" / \
        commit
    assert proc.stdout.strip() == str(snapshot) and (snapshot / "model.safetensors").is_file()
    progress = [ln for ln in proc.stderr.splitlines() if "] download:" in ln
                or "] verify:" in ln]
    assert progress and progress[-1].endswith("7/7 files") and "verify" in progress[-1]
    assert not (Path(os.environ["HF_HUB_CACHE"]) / "models--hpcserve-test--tiny-model").exists()
    models = json.loads(run_cli("models", "--on", "box", "--json").stdout)
    assert [(m["repo_id"], m["revision"]) for m in models] == [(TINY, commit)]
    absent = run_cli("models", "rm", "hpcserve-test/tiny", "--on", "box")
    assert "no model 'hpcserve-test/tiny'" in one_line_error(absent, 2)
    assert TINY in absent.stderr  # the hint's close match
    assert run_cli("models", "rm", TINY, "--on", "box").returncode == 0
    assert not snapshot.exists()
    # a gated repo: refused without the token, pulled with it; the token in no file or output
    line = one_line_error(run_cli("pull", "gated-hf", "--on", "box"), 2)
    assert "gated" in line and "HF_TOKEN" in line
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    ok = run_cli("pull", "gated-hf", "--on", "box", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["target"] == "box" and TOKEN not in ok.stdout + ok.stderr
    for path in [*(tmp_path / "remote-work").rglob("*"), *(tmp_path / "remote-cache").rglob("*")]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_errors_are_one_line(box, hf_hub: HubStandIn, run_cli):
    hf_hub.cut_once("model.safetensors", 11 * 1024 * 1024, then_status=500)
    line = one_line_error(run_cli("pull", "tiny-hf", "--on", "box"), 1)
    assert "500" in line and "'box'" in line
    assert run_cli("pull", "tiny-hf", "--on", "box").returncode == 0  # resumed
    box["python"] = "/nonexistent/python3"
    Path(os.environ["HPCSERVE_TARGETS"]).write_text(yaml.safe_dump({"targets": {"box": box}}))
    line = one_line_error(run_cli("models", "--on", "box"), 2)
    assert "cannot run its python (/nonexistent/python3)" in line
    box["python"] = "/usr/bin/python3"  # no huggingface_hub there
    Path(os.environ["HPCSERVE_TARGETS"]).write_text(yaml.safe_dump({"targets": {"box": box}}))
    line = one_line_error(run_cli("pull", "tiny-hf", "--on", "box"), 2)
    assert "has no huggingface_hub" in line and "/usr/bin/python3" in line
