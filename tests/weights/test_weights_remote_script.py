"""remote_pull.py, the script a SLURM login node runs, run here as a separate process with the
real huggingface_hub client against the Hub stand-in: background pull, progress file, result,
the lock a second start finds, the token (stdin only), list and rm piped in on stdin, and the
request the local side builds. The same script on the real cluster: test_weights_slurm.py."""

from __future__ import annotations

import fcntl
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hf_standin.fixtures import GATED, TINY, TOKEN
from hf_standin.server import HubStandIn
from hpcserve_jupyter.errors import BadInput
from hpcserve_jupyter.weights import HubRef, allow_patterns
from hpcserve_jupyter.weights.remote import SCRIPT, request
from waiting import until

pytest.importorskip("huggingface_hub")
HF_FILES = ["chat_template.jinja", "config.json", "generation_config.json",
            "model.safetensors", "original/params.json", "tokenizer.json",
            "tokenizer_config.json"]


def script(*args: str, stdin: str = "", python: list[str] | None = None) -> dict[str, Any]:
    proc = subprocess.run([*(python or [sys.executable]), str(SCRIPT), *args], input=stdin,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def piped(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-", *args], input=SCRIPT.read_text(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def prepare(tmp_path: Path, hub: HubStandIn, repo: str = TINY, name: str = "job") -> Path:
    folder = tmp_path / name
    folder.mkdir(mode=0o700)
    req = request(HubRef(repo), "vllm", None, {"HF_HUB_CACHE": str(tmp_path / "cache"),
                                               "HF_ENDPOINT": hub.url})
    (folder / "request.json").write_text(json.dumps(req))
    return folder


def finished(folder: Path) -> dict[str, Any]:
    state: dict[str, Any] = {}

    def done() -> bool:
        state.update(script("status", str(folder)))
        return state["result"] is not None and not state["running"]

    until(done, timeout=120)
    return state


def test_a_background_pull_reports_progress_and_a_verified_result(hf_hub: HubStandIn,
                                                                   repo_folders, tmp_path):
    folder = prepare(tmp_path, hf_hub)
    assert script("start", str(folder), stdin="\n") == {"ok": True, "state": "started"}
    state = finished(folder)
    result = state["result"]
    commit = hf_hub.repos[TINY].revisions["main"].commit
    assert result["ok"] and result["commit"] == commit and result["files"] == HF_FILES
    snap = Path(result["snapshot"])
    assert snap == tmp_path / "cache" / "models--hpcserve-test--tiny-model" / "snapshots" / commit
    for name in HF_FILES:
        assert hashlib.sha256((snap / name).read_bytes()).digest() == \
            hashlib.sha256((repo_folders["main"] / name).read_bytes()).digest()
    total = sum((repo_folders["main"] / n).stat().st_size for n in HF_FILES)
    assert state["progress"] == {"phase": "verify", "bytes_done": total, "bytes_total": total,
                                 "files_done": len(HF_FILES), "files_total": len(HF_FILES)}
    assert not any(r.auth for r in hf_hub.log)  # no token given, none sent
    # listed and removed by the script piped in on stdin
    env = json.dumps({"HF_HUB_CACHE": str(tmp_path / "cache")})
    listed = piped("list", env)
    assert [(m["repo_id"], m["revision"], m["refs"], m["files"]) for m in listed["models"]] == \
        [(TINY, commit, ["main"], len(HF_FILES))]
    assert listed["models"][0]["size"] == total
    assert piped("rm", env, "hpcserve-test/other")["ok"] is False
    assert piped("rm", env, "../..")["ok"] is False
    assert piped("rm", env, TINY) == {"ok": True, "freed": total,
                                      "cache": str(tmp_path / "cache")}
    assert piped("list", env)["models"] == []
    assert (tmp_path / "cache").is_dir()


def test_a_second_start_finds_the_pull_running(hf_hub: HubStandIn, tmp_path):
    folder = prepare(tmp_path, hf_hub)
    with open(folder / "lock", "a") as held:  # what a running pull holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert script("start", str(folder)) == {"ok": True, "state": "running"}
        assert script("status", str(folder))["running"] is True
    assert not hf_hub.log  # nothing was started


def test_the_token_comes_on_stdin_and_stays_in_memory(hf_hub: HubStandIn, tmp_path):
    folder = prepare(tmp_path, hf_hub, GATED)
    assert script("start", str(folder), stdin="\n")["ok"]
    refused = finished(folder)["result"]
    assert refused["ok"] is False and refused["error"] == "gated"
    assert script("start", str(folder), stdin=TOKEN + "\n")["state"] == "started"
    assert finished(folder)["result"]["ok"] is True
    assert any(r.auth for r in hf_hub.log)
    for path in [*folder.rglob("*"), *(tmp_path / "cache").rglob("*")]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_an_interrupted_pull_completes_on_the_next_start(hf_hub: HubStandIn, repo_folders,
                                                         tmp_path):
    folder = prepare(tmp_path, hf_hub)
    hf_hub.cut_once("model.safetensors", 11 * 1024 * 1024, then_status=500)
    script("start", str(folder))
    failed = finished(folder)["result"]
    assert failed["ok"] is False and "500" in failed["message"]
    script("start", str(folder))
    result = finished(folder)["result"]
    assert result["ok"] and hashlib.sha256(
        (Path(result["snapshot"]) / "model.safetensors").read_bytes()).digest() == \
        hashlib.sha256((repo_folders["main"] / "model.safetensors").read_bytes()).digest()


def test_an_interpreter_without_huggingface_hub_is_named(hf_hub: HubStandIn, tmp_path):
    folder = prepare(tmp_path, hf_hub)
    answer = script("start", str(folder), python=[sys.executable, "-S"])
    assert answer["ok"] is False and answer["error"] == "no_huggingface_hub"
    assert not hf_hub.log


def test_the_request_carries_the_engine_format_rule():
    files = ["model.safetensors", "pytorch_model.bin", "config.json"]
    req = request(HubRef(TINY), "vllm", "v1", {"HF_HOME": "~/hf"})
    from hpcserve_jupyter.weights.remote_pull import choose_patterns

    assert choose_patterns(req, files) == allow_patterns(HubRef(TINY), "vllm", files)
    assert choose_patterns(req, files[1:]) == allow_patterns(HubRef(TINY), "vllm", files[1:])
    gguf = HubRef("o/n", "m-Q4.gguf")
    assert choose_patterns(request(gguf, "llama-cpp", None, {}), []) == \
        allow_patterns(gguf, "llama-cpp", [])
    assert req["revision"] == "v1" and req["env"] == {"HF_HOME": "~/hf"}
    with pytest.raises(BadInput, match="name it in the recipe"):
        request(HubRef("o/n"), "llama-cpp", None, {})


def test_a_batch_job_reads_the_token_file_and_deletes_it_first(hf_hub: HubStandIn, tmp_path):
    folder = prepare(tmp_path, hf_hub, GATED)
    (folder / "token").write_text(TOKEN + "\n")
    (folder / "token").chmod(0o600)
    proc = subprocess.run([sys.executable, str(SCRIPT), "run", str(folder)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True  # the foreground run prints its result
    assert not (folder / "token").exists()
    assert json.loads((folder / "result.json").read_text())["ok"] is True
    assert TOKEN not in proc.stdout + proc.stderr
