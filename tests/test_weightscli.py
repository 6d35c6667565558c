"""`hpcserve pull` / `hpcserve models` as users run them (the console script in a subprocess),
against the Hub stand-in: progress lines and the snapshot path, the target's cache, listing,
removal, and one-line errors with the documented exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from cli_errors import one_line_error
from hf_standin.conftest import hf_hub, repo_folders
from hf_standin.fixtures import GATED, TINY, TOKEN, use_recipes
from hf_standin.server import HubStandIn

__all__ = ["hf_hub", "repo_folders"]  # the stand-in's fixtures, used below
pytest.importorskip("huggingface_hub")

RECIPES = {
    "tiny-hf": {"model": TINY, "backends": ["vllm", "transformers"]},
    "gated-hf": {"model": GATED, "backends": ["vllm"]},
    "tiny-gguf": {"model": "hpcserve-test/tiny-gguf/tiny-Q4_K_M.gguf", "backends": ["llama-cpp"]},
    "local-path": {"model": "/models/nowhere", "backends": ["vllm"]},
}


@pytest.fixture
def setup(hf_hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubStandIn:
    use_recipes(monkeypatch, tmp_path / "recipes", RECIPES)
    (tmp_path / "targets.yaml").write_text(yaml.safe_dump({"targets": {
        "other-cache": {"kind": "local", "env": {"HF_HUB_CACHE": str(tmp_path / "other")}},
        "pods": {"kind": "tapis-pods", "base_url": "https://tapis.example.org"},
        "hpc": {"kind": "tapis-jobs", "base_url": "https://tapis.example.org"}}}))
    return hf_hub


def test_pull_prints_progress_and_the_snapshot(setup: HubStandIn, run_cli, repo_folders):
    proc = run_cli("pull", "tiny-hf", "--backend", "transformers")
    assert proc.returncode == 0, proc.stderr
    snapshot = Path(proc.stdout.strip())
    commit = setup.repos[TINY].revisions["main"].commit
    assert snapshot == Path(os.environ["HF_HUB_CACHE"]) / \
        "models--hpcserve-test--tiny-model" / "snapshots" / commit
    assert (snapshot / "model.safetensors").read_bytes() == \
        (repo_folders["main"] / "model.safetensors").read_bytes()
    assert not (snapshot / "pytorch_model.bin").exists()
    progress = [ln for ln in proc.stderr.splitlines() if "] download:" in ln
                or "] verify:" in ln]
    assert progress and progress[-1].endswith("7/7 files") and "verify" in progress[-1]
    assert "verified" in proc.stderr


def test_pull_json_a_gguf_file_into_another_targets_cache(setup: HubStandIn, run_cli, tmp_path):
    proc = run_cli("pull", "tiny-gguf", "--on", "other-cache", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["files"] == ["tiny-Q4_K_M.gguf"] and out["target"] == "other-cache"
    assert Path(out["model_path"]) == Path(out["snapshot"]) / "tiny-Q4_K_M.gguf"
    assert Path(out["snapshot"]).is_relative_to(tmp_path / "other")
    assert Path(out["model_path"]).is_file()


def test_models_lists_and_rm_frees(setup: HubStandIn, run_cli):
    assert run_cli("pull", "tiny-hf").returncode == 0
    assert run_cli("pull", "tiny-hf", "--revision", "v1").returncode == 0
    listed = run_cli("models")
    assert listed.returncode == 0, listed.stderr
    rows = [ln for ln in listed.stdout.splitlines() if ln.startswith(TINY)]
    assert len(rows) == 2 and any("(main)" in r for r in rows) and any("(v1)" in r for r in rows)
    data = json.loads(run_cli("models", "--json").stdout)
    assert {m["revision"] for m in data} == {r.commit for r in setup.repos[TINY].revisions.values()}
    removed = run_cli("models", "rm", TINY, "--on", "local")
    assert removed.returncode == 0, removed.stderr
    assert "removed hpcserve-test/tiny-model" in removed.stderr
    assert json.loads(run_cli("models", "--json").stdout) == []
    empty = run_cli("models")
    assert empty.returncode == 0 and "no models in" in empty.stderr


def test_gated_pull_needs_the_token_variable(setup: HubStandIn, run_cli, monkeypatch):
    line = one_line_error(run_cli("pull", "gated-hf"), 2)
    assert "gated" in line and "HF_TOKEN" in line
    monkeypatch.setenv("LAB_HF_TOKEN", "hf_wrong_token_for_this_test")
    line = one_line_error(run_cli("pull", "gated-hf", "--token-env", "LAB_HF_TOKEN"), 2)
    assert "LAB_HF_TOKEN" in line and "hf_wrong_token_for_this_test" not in line
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    ok = run_cli("pull", "gated-hf")
    assert ok.returncode == 0, ok.stderr
    assert TOKEN not in ok.stdout + ok.stderr


@pytest.mark.parametrize(("args", "code", "words"), [
    (("pull", "no-such-recipe"), 2, "unknown recipe 'no-such-recipe'"),
    (("pull", "local-path"), 2, "not a Hugging Face repo id"),
    (("pull", "tiny-hf", "--backend", "tgi"), 2, "does not run on backend 'tgi'"),
    (("pull", "tiny-hf", "--on", "pods"), 2, "gives each session a volume of its own"),
    (("models", "--on", "pods"), 2, "gives each session a volume of its own"),
    (("models", "rm", "a/b", "--on", "pods"), 2, "gives each session a volume of its own"),
    (("pull", "tiny-hf", "--on", "hpc"), 2, "not yet supported for kind 'tapis-jobs'"),
    (("models", "--on", "hpc"), 2, "not yet supported for kind 'tapis-jobs'"),
    (("pull", "tiny-hf", "--on", "nowhere"), 2, "unknown target 'nowhere'"),
    (("pull", "tiny-hf", "--revision", "v7"), 2, "has no revision 'v7'"),
    (("models", "rm", "hpcserve-test/absent"), 2, "no model 'hpcserve-test/absent'"),
    (("pull", "tiny-hf", "--token-env", "HF-TOKEN"), 2, "an environment variable name"),
    (("pull", "tiny-hf", "--revision", "main\nx"), 2, "invalid revision"),
])
def test_bad_input_is_one_line(setup: HubStandIn, run_cli, args, code, words):
    assert words in one_line_error(run_cli(*args), code)


def test_a_recipe_of_a_package_file_has_nothing_to_pull(setup: HubStandIn, run_cli,
                                                         monkeypatch):
    monkeypatch.setenv("HPCSERVE_RECIPES", "")
    line = one_line_error(run_cli("pull", "smollm2-135m"), 2)
    assert "Python package" in line


def test_an_unreachable_hub_is_one_line(setup: HubStandIn, run_cli):
    setup.stop()
    line = one_line_error(run_cli("pull", "tiny-hf"), 1)
    assert "cannot reach the Hugging Face Hub at " + setup.url in line
