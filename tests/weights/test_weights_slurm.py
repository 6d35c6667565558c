"""`hpcserve pull/models --on` a SLURM target, on the real test cluster: the weights are pulled
by a process of the cluster's user on its login node (this machine, through sshd), from the Hub
stand-in on 127.0.0.1, into that user's model cache; never through this process.

Which process sent each request to the stand-in: its handler looks the connection's client
port up in /proc/net/tcp, whose entry names the owner's uid (the login node is this machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli_errors import one_line_error
from hf_standin import server as standin_server
from hf_standin.conftest import hf_hub, repo_folders
from hf_standin.fixtures import GATED, TINY, TOKEN, use_recipes
from hf_standin.server import HubStandIn
from target_fixtures import cluster, slurm_config

__all__ = ["cluster", "hf_hub", "repo_folders", "slurm_config"]
pytest.importorskip("huggingface_hub")
pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

HF_FILES = ["chat_template.jinja", "config.json", "generation_config.json",
            "model.safetensors", "original/params.json", "tokenizer.json",
            "tokenizer_config.json"]
RECIPES = {"tiny-hf": {"model": TINY, "backends": ["vllm", "transformers"]},
           "gated-hf": {"model": GATED, "backends": ["vllm"]}}


def _socket_uid(local_port: int, remote_port: int) -> int | None:
    """The uid owning the TCP socket 127.0.0.1:local_port -> :remote_port, from /proc."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
            if int(local, 16) == local_port and int(remote, 16) == remote_port:
                return int(fields[7])
    return None


@pytest.fixture
def peers(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """The uid of the client behind every connection the stand-in accepts."""
    uids: list[int | None] = []
    setup = standin_server._Handler.setup

    def recording(handler: Any) -> None:
        setup(handler)
        uids.append(_socket_uid(handler.client_address[1], handler.server.server_address[1]))

    monkeypatch.setattr(standin_server._Handler, "setup", recording)
    return uids


@pytest.fixture
def remote(cluster: Any, slurm_config: dict[str, Any], hf_hub: HubStandIn, peers: list,
           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The recipes, and a `cluster` target whose engines (and pulls) use the stand-in and the
    cluster user's default cache (~/.cache/huggingface/hub); its workdir is the test's own."""
    use_recipes(monkeypatch, tmp_path / "recipes", RECIPES)
    home = Path(pwd.getpwnam(cluster.user).pw_dir)
    workdir = home / "hpcserve-weights-tests" / tmp_path.name
    config = {**slurm_config, "workdir": str(workdir),
              "env": {"HF_ENDPOINT": hf_hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}}
    Path(os.environ["HPCSERVE_TARGETS"]).write_text(
        yaml.safe_dump({"targets": {"cluster": config}}))
    cache = home / ".cache" / "huggingface" / "hub"
    made = next((d for d in (home / ".cache", cache.parent) if not d.exists()), None)
    for repo in (TINY, GATED):  # a previous run's, if it failed half-way
        shutil.rmtree(cache / ("models--" + repo.replace("/", "--")), ignore_errors=True)
    yield {"home": home, "workdir": workdir, "cache": cache, "uid": pwd.getpwnam(
        cluster.user).pw_uid}
    for repo in (TINY, GATED):
        name = "models--" + repo.replace("/", "--")
        shutil.rmtree(cache / name, ignore_errors=True)
        shutil.rmtree(cache / ".locks" / name, ignore_errors=True)
    if made is not None:  # the test made the user's ~/.cache (or its huggingface folder)
        shutil.rmtree(made, ignore_errors=True)
    shutil.rmtree(workdir, ignore_errors=True)
    with contextlib.suppress(OSError):
        workdir.parent.rmdir()


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]


def test_pull_list_and_rm_on_the_login_node(remote: dict[str, Any], hf_hub: HubStandIn,
                                            peers: list, repo_folders, run_cli):
    proc = run_cli("pull", "tiny-hf", "--on", "cluster", "--backend", "transformers")
    assert proc.returncode == 0, proc.stderr
    commit = hf_hub.repos[TINY].revisions["main"].commit
    snapshot = remote["cache"] / "models--hpcserve-test--tiny-model" / "snapshots" / commit
    assert proc.stdout.strip() == str(snapshot)
    progress = [ln for ln in proc.stderr.splitlines() if "] download:" in ln
                or "] verify:" in ln]
    assert progress and progress[-1].endswith("7/7 files") and "verify" in progress[-1]
    # the files, in the cluster user's cache, owned by that user, the sizes the hub lists
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*")
                  if p.is_file()) == HF_FILES
    for name in HF_FILES:
        path = snapshot / name
        assert path.stat().st_size == (repo_folders["main"] / name).stat().st_size
        assert path.resolve().stat().st_uid == remote["uid"]
    assert (snapshot.parent.parent / "refs" / "main").read_text() == commit
    # every request reached the stand-in from the cluster user's process, none from this one
    assert hf_hub.requests("GET", server="cdn") and peers
    assert set(peers) == {remote["uid"]} != {os.getuid()}
    assert not (Path(os.environ["HF_HUB_CACHE"]) / "models--hpcserve-test--tiny-model").exists()
    # the pull's private folder
    weights = remote["workdir"] / "weights"
    assert (weights.stat().st_mode & 0o777) == 0o700
    assert all((d.stat().st_mode & 0o777) == 0o700 for d in weights.iterdir() if d.is_dir())

    listed = run_cli("models", "--on", "cluster", "--json")
    assert listed.returncode == 0, listed.stderr
    models = json.loads(listed.stdout)
    assert [(m["repo_id"], m["revision"], m["refs"], m["files"]) for m in models] == \
        [(TINY, commit, ["main"], len(HF_FILES))]
    assert models[0]["size"] == sum((repo_folders["main"] / n).stat().st_size for n in HF_FILES)
    table = run_cli("models", "--on", "cluster")
    assert table.returncode == 0 and any(ln.startswith(TINY) and "(main)" in ln
                                         for ln in table.stdout.splitlines())

    absent = one_line_error(run_cli("models", "rm", "hpcserve-test/absent", "--on", "cluster"), 2)
    assert "no model 'hpcserve-test/absent'" in absent
    assert "not a repo id" in one_line_error(run_cli("models", "rm", "../..", "--on", "cluster"),
                                             2)
    removed = run_cli("models", "rm", TINY, "--on", "cluster")
    assert removed.returncode == 0, removed.stderr
    assert "removed hpcserve-test/tiny-model" in removed.stderr
    assert not (remote["cache"] / "models--hpcserve-test--tiny-model").exists()
    assert remote["cache"].is_dir()
    assert json.loads(run_cli("models", "--on", "cluster", "--json").stdout) == []


def test_a_gated_model_needs_the_token_which_no_remote_file_keeps(
        remote: dict[str, Any], hf_hub: HubStandIn, run_cli, monkeypatch):
    line = one_line_error(run_cli("pull", "gated-hf", "--on", "cluster"), 2)
    assert "gated" in line and "HF_TOKEN" in line
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    ok = run_cli("pull", "gated-hf", "--on", "cluster")
    assert ok.returncode == 0, ok.stderr
    assert TOKEN not in ok.stdout + ok.stderr
    assert any(r.auth for r in hf_hub.requests(server="hub"))
    assert files_under(remote["cache"] / "models--hpcserve-test--gated-model")
    for path in [*files_under(remote["workdir"]),
                 *files_under(remote["cache"] / "models--hpcserve-test--gated-model")]:
        assert TOKEN.encode() not in path.read_bytes(), path


def test_an_interrupted_pull_completes_on_the_next_run(remote: dict[str, Any],
                                                       hf_hub: HubStandIn, repo_folders,
                                                       run_cli):
    hf_hub.cut_once("model.safetensors", 11 * 1024 * 1024, then_status=500)
    line = one_line_error(run_cli("pull", "tiny-hf", "--on", "cluster"), 1)
    assert "500" in line and "cluster" in line
    commit = hf_hub.repos[TINY].revisions["main"].commit
    snapshot = remote["cache"] / "models--hpcserve-test--tiny-model" / "snapshots" / commit
    assert not (snapshot / "model.safetensors").exists()
    again = run_cli("pull", "tiny-hf", "--on", "cluster")
    assert again.returncode == 0, again.stderr
    assert (snapshot / "model.safetensors").read_bytes() == \
        (repo_folders["main"] / "model.safetensors").read_bytes()


def test_a_python_without_huggingface_hub_is_named(remote: dict[str, Any], hf_hub, run_cli):
    targets = Path(os.environ["HPCSERVE_TARGETS"])
    config = yaml.safe_load(targets.read_text())
    config["targets"]["cluster"]["python"] = "/usr/bin/python3"
    targets.write_text(yaml.safe_dump(config))
    line = one_line_error(run_cli("pull", "tiny-hf", "--on", "cluster"), 2)
    assert "/usr/bin/python3" in line and "huggingface_hub" in line
    assert not hf_hub.log


def test_pull_job_runs_the_same_pull_as_a_batch_job(remote: dict[str, Any], hf_hub: HubStandIn,
                                                    peers: list, run_cli, monkeypatch):
    targets = Path(os.environ["HPCSERVE_TARGETS"])
    config = yaml.safe_load(targets.read_text())
    config["targets"]["cluster"]["pull"] = "job"
    targets.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    proc = run_cli("pull", "gated-hf", "--on", "cluster")
    assert proc.returncode == 0, proc.stderr
    job = next(ln for ln in proc.stderr.splitlines() if "submitted job" in ln).split(
        "submitted job ")[1].split()[0]
    assert job.isdigit() and TOKEN not in proc.stdout + proc.stderr
    commit = hf_hub.repos[GATED].revisions["main"].commit
    assert proc.stdout.strip() == str(remote["cache"] / "models--hpcserve-test--gated-model"
                                      / "snapshots" / commit)
    assert set(peers) == {remote["uid"]}
    folders = [d for d in (remote["workdir"] / "weights").iterdir() if d.is_dir()]
    assert len(folders) == 1 and (folders[0] / "job").read_text().strip() == job
    assert not (folders[0] / "token").exists()
    for path in files_under(remote["workdir"]):
        assert TOKEN.encode() not in path.read_bytes(), path


def test_launch_on_an_offline_cluster_uses_the_pulled_snapshot(remote: dict[str, Any],
                                                               hf_hub: HubStandIn, run_cli):
    """`offline: true`: a hub model the cluster's cache lacks is refused before any sbatch;
    once pulled there, the job gets the snapshot path on the cluster and HF_HUB_OFFLINE=1."""
    from hpcserve_jupyter.api import Hpcserve
    from hpcserve_jupyter.errors import BadInput

    targets = Path(os.environ["HPCSERVE_TARGETS"])
    config = yaml.safe_load(targets.read_text())["targets"]["cluster"]
    offline = {"cluster": {**config, "offline": True}}
    hp = Hpcserve(poll_interval=0.5, target_configs=offline)
    try:
        with pytest.raises(BadInput, match="offline: true") as err:
            hp.launch("tiny-hf", backend="transformers", on="cluster", wait=False)
        assert "hpcserve pull tiny-hf --on cluster" in (err.value.hint or "")
        assert hp.sessions() == []  # nothing recorded, nothing submitted
        assert not (remote["workdir"] / "sessions").exists()

        proc = run_cli("pull", "tiny-hf", "--on", "cluster", "--backend", "transformers")
        assert proc.returncode == 0, proc.stderr
        snapshot = proc.stdout.strip()
        assert snapshot.startswith(str(remote["cache"]))
        s = hp.launch("tiny-hf", backend="transformers", on="cluster", wait=False)
        try:
            assert s.spec["model"] == snapshot  # the path on the cluster
            assert ("HF_HUB_OFFLINE", "1") in [tuple(kv) for kv in s.spec["env"]]
            job = (remote["workdir"] / "sessions" / s.id / "job.sh").read_text()
            assert snapshot in job
        finally:
            hp.stop(s.id)
    finally:
        hp.close()
