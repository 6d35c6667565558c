"""`hpcserve pull/models/models rm --on` a Tapis Pods target: the weights go into its shared
model volume through the real tapipy client and the Pods stand-in's volume routes (upload,
contents, list), in the Hugging Face cache layout its pods read (HF_HOME=<model_dir>/hf);
removal runs a pod that mounts the volume. A launch on an `offline: true` target then refuses
a model the volume lacks and gives the pod the pulled snapshot's path and HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli_errors import one_line_error
from hf_standin.fixtures import GATED, TINY, TOKEN, use_recipes
from hf_standin.server import HubStandIn
from target_fixtures import pod_proxy, pods_config, standin

__all__ = ["pod_proxy", "pods_config", "standin"]
pytest.importorskip("huggingface_hub")
pytest.importorskip("tapipy")
pytestmark = pytest.mark.timeout(300)

VOLUME = "hpcmodels"
HF_FILES = ["chat_template.jinja", "config.json", "generation_config.json",
            "model.safetensors", "original/params.json", "tokenizer.json",
            "tokenizer_config.json"]
RECIPES = {"tiny-hf": {"model": TINY, "backends": ["vllm", "transformers"]},
           "gated-hf": {"model": GATED, "backends": ["vllm"]}}
REPO_DIR = "hf/hub/models--hpcserve-test--tiny-model"
TOKEN_ENV = "HPCSERVE_TEST_HF_TOKEN"


@pytest.fixture
def pods(pods_config: dict[str, Any], hf_hub: HubStandIn, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The recipes, and a `pods` target with a shared model volume and the gated model's
    token variable; `hpcserve` pulls from the hub stand-in (HF_ENDPOINT)."""
    use_recipes(monkeypatch, tmp_path / "recipes", RECIPES)
    config = {**pods_config, "volume_id": VOLUME, "hf_token_env": TOKEN_ENV}
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    Path(os.environ["HPCSERVE_TARGETS"]).write_text(
        yaml.safe_dump({"targets": {"pods": config}}))
    return config


def volume_dir(standin: Any) -> Path:
    return standin.volumes[VOLUME].path


def upload_paths(standin: Any) -> list[str]:
    return [c.path.split(f"/volumes/{VOLUME}/upload/", 1)[1]
            for c in standin.calls_to("upload_to_volume")]


def test_pull_list_and_rm_in_the_shared_volume(pods: dict, standin: Any, hf_hub: HubStandIn,
                                               repo_folders, run_cli):
    proc = run_cli("pull", "tiny-hf", "--on", "pods", "--backend", "transformers")
    assert proc.returncode == 0, proc.stderr
    commit = hf_hub.repos[TINY].revisions["main"].commit
    assert proc.stdout.strip() == f"/app/models/{REPO_DIR}/snapshots/{commit}"  # in the pod
    progress = [ln for ln in proc.stderr.splitlines() if "] upload:" in ln]
    assert progress and progress[-1].endswith("7/7 files")
    # the snapshot's files, byte for byte, in the volume's HF cache layout; refs/main last
    snapshot = volume_dir(standin) / REPO_DIR / "snapshots" / commit
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*")
                  if p.is_file()) == HF_FILES
    for name in HF_FILES:
        assert (snapshot / name).read_bytes() == (repo_folders["main"] / name).read_bytes()
    assert (volume_dir(standin) / REPO_DIR / "refs" / "main").read_text() == commit
    sent = upload_paths(standin)
    assert len(sent) == len(HF_FILES) + 2  # the files, the ref, the index (in that order)
    assert sent[-2:] == [f"{REPO_DIR}/refs/main", ".hpcserve-model--hpcserve-test--tiny-model.json"]
    # no copy is kept on this machine once the volume has it
    staging = Path(os.environ["HPCSERVE_HOME"]) / "weights-staging"
    assert not staging.exists() or not any(staging.iterdir())

    listed = json.loads(run_cli("models", "--on", "pods", "--json").stdout)
    assert [(m["repo_id"], m["revision"], m["refs"], m["files"]) for m in listed] == [
        (TINY, commit, ["main"], len(HF_FILES))]
    assert listed[0]["size"] == sum((repo_folders["main"] / n).stat().st_size for n in HF_FILES)
    assert TINY in run_cli("models", "--on", "pods").stdout

    # a second pull asks the hub which commit main is, finds it complete in the volume's
    # index and neither downloads nor uploads anything
    downloads = len(hf_hub.requests("GET", server="cdn"))
    again = run_cli("pull", "tiny-hf", "--on", "pods", "--backend", "transformers")
    assert again.returncode == 0, again.stderr
    assert again.stdout == proc.stdout
    assert upload_paths(standin) == sent
    assert len(hf_hub.requests("GET", server="cdn")) == downloads

    rm = run_cli("models", "rm", TINY, "--on", "pods")
    assert rm.returncode == 0, rm.stderr
    assert f"removed {TINY}" in rm.stderr
    assert not (volume_dir(standin) / REPO_DIR).exists()
    assert json.loads(run_cli("models", "--on", "pods", "--json").stdout) == []
    assert not standin.pods  # the removal pod was deleted
    assert "no model" in one_line_error(run_cli("models", "rm", TINY, "--on", "pods"), 2)


def test_an_upload_cut_short_resumes_without_sending_twice(pods: dict, standin: Any,
                                                           run_cli):
    standin.fail_next("upload_to_volume", 500, times=None, after=3)
    cut = run_cli("pull", "tiny-hf", "--on", "pods", "--backend", "transformers")
    assert "Traceback" not in cut.stderr and cut.returncode != 0
    first = upload_paths(standin)
    standin.clear_faults()
    assert json.loads(run_cli("models", "--on", "pods", "--json").stdout) == []  # no index
    done = run_cli("pull", "tiny-hf", "--on", "pods", "--backend", "transformers")
    assert done.returncode == 0, done.stderr
    second = upload_paths(standin)[len(first):]
    accepted = first[:3]
    assert not set(accepted) & set(second)  # what the volume got is not sent again
    assert len(accepted) + len(second) == len(HF_FILES) + 2


def test_a_gated_model_uses_the_targets_token_which_stays_secret(pods: dict, standin: Any,
                                                                 run_cli):
    proc = run_cli("pull", "gated-hf", "--on", "pods")
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    for path in volume_dir(standin).rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for call in standin.calls:
        assert TOKEN not in repr(call.body)


def test_without_the_token_the_gated_model_is_one_clear_line(pods: dict, standin: Any,
                                                             run_cli, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV)
    line = one_line_error(run_cli("pull", "gated-hf", "--on", "pods"), 2)
    assert "gated" in line and TOKEN_ENV in line
    assert not standin.calls_to("upload_to_volume")


def test_launch_on_an_offline_target_uses_the_pulled_snapshot(pods: dict, standin: Any,
                                                              hf_hub: HubStandIn, run_cli):
    from hpcserve_jupyter.api import Hpcserve
    from hpcserve_jupyter.errors import BadInput

    hp = Hpcserve(monitor=False, target_configs={"pods": {**pods, "offline": True}})
    try:
        with pytest.raises(BadInput, match="offline: true") as err:
            hp.launch("tiny-hf", backend="transformers", on="pods", wait=False)
        assert "hpcserve pull tiny-hf --on pods" in (err.value.hint or "")
        assert hp.sessions() == [] and not standin.calls_to("create_pod")

        assert run_cli("pull", "tiny-hf", "--on", "pods", "--backend",
                       "transformers").returncode == 0
        commit = hf_hub.repos[TINY].revisions["main"].commit
        path = f"/app/models/{REPO_DIR}/snapshots/{commit}"
        s = hp.launch("tiny-hf", backend="transformers", on="pods", wait=False)
        try:
            assert s.spec["model"] == path
            body = standin.calls_to("create_pod")[-1].body
            assert path in body["arguments"]
            assert body["environment_variables"]["HF_HUB_OFFLINE"] == "1"
            assert "/app/models" in body["volume_mounts"]  # the shared volume, where it is
            assert body["volume_mounts"]["/app/models"]["source_id"] == VOLUME
        finally:
            hp.stop(s.id)
    finally:
        hp.close()
