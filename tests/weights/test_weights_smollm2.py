"""End to end: `hpcserve pull smollm2-135m-hf` (the built-in recipe, for the transformers
backend) fetches the real SmolLM2 checkpoint the engine tests make from the Hub stand-in into a
fresh HF cache; the engine's environment then finds it there by repo id with the hub switched off
(HF_HUB_OFFLINE=1), as a launch from the cache does; then a launch on a target without internet
serves it from the cache."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hf_standin.fixtures import SMOLLM2, point_client_at
from hf_standin.server import HubStandIn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
from real_engines import MODEL_FILES, engine_of, engine_python, hf_checkpoint

SETUP = "create it with scripts/setup-engine-envs.sh transformers"
CHECK = """
import sys
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer
from huggingface_hub import snapshot_download

repo = sys.argv[1]
config = AutoConfig.from_pretrained(repo)
tokenizer = AutoTokenizer.from_pretrained(repo)
# offline: the cached snapshot of refs/main, as vLLM asks for it (with its allow-patterns;
# without patterns huggingface_hub 2.4 calls the snapshot incomplete, as it lacks README.md)
folder = snapshot_download(repo, allow_patterns=["*.safetensors", "*.json"])
with safe_open(folder + "/model.safetensors", "pt") as f:
    names = list(f.keys())
print(config.model_type, len(tokenizer("hello world")["input_ids"]) > 0, len(names) > 0, folder)
"""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    python = engine_python(".venv-transformers", SETUP)
    return python, hf_checkpoint(python, tmp_path_factory.mktemp("smollm2-hf"), SETUP)


@pytest.fixture
def smollm2_hub(checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> Iterator[HubStandIn]:
    with HubStandIn() as hub:
        hub.add_repo(SMOLLM2, checkpoint[1])
        point_client_at(monkeypatch, hub.url, tmp_path / "hf-home")
        yield hub


def test_pull_the_smollm2_checkpoint_then_load_it_offline(smollm2_hub: HubStandIn, checkpoint,
                                                          run_cli):
    python, source = checkpoint
    proc = run_cli("pull", "smollm2-135m-hf", "--backend", "transformers", timeout=600)
    assert proc.returncode == 0, proc.stderr
    snapshot = Path(proc.stdout.strip())
    commit = smollm2_hub.repos[SMOLLM2].revisions["main"].commit
    assert snapshot == (Path(os.environ["HF_HUB_CACHE"])
                        / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / commit)
    wanted = sorted(p.name for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    assert sorted(p.name for p in snapshot.iterdir()) == wanted
    assert set(MODEL_FILES) <= set(wanted)
    for name in wanted:
        assert sha256(snapshot / name) == sha256(source / name), name
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("HF_ENDPOINT")
    done = subprocess.run([str(python), "-c", CHECK, SMOLLM2], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["llama", "True", "True", str(snapshot)]


def test_launch_offline_from_the_cache_on_transformers(smollm2_hub: HubStandIn, checkpoint,
                                                       run_cli):
    """`hpcserve pull`, then the hub goes away: a launch on an `offline: true` local target
    gives the engine the snapshot path and HF_HUB_OFFLINE=1, and it serves."""
    from hpcserve_jupyter.api import Hpcserve

    python, _ = checkpoint
    proc = run_cli("pull", "smollm2-135m-hf", "--backend", "transformers", timeout=600)
    assert proc.returncode == 0, proc.stderr
    snapshot = proc.stdout.strip()
    smollm2_hub.stop()  # no hub from here on
    hp = Hpcserve(poll_interval=0.5, target_configs={
        "nodes": {"kind": "local", "python": str(python), "offline": True}})
    try:
        s = hp.launch("smollm2-135m-hf", backend="transformers", on="nodes", timeout=300)
        assert s.state == "ready", (s.reason, hp.logs(s.id, tail=40))
        assert s.spec["model"] == snapshot
        engine = engine_of(s.id)
        assert snapshot in engine.cmdline()
        assert engine.environ().get("HF_HUB_OFFLINE") == "1"
        # served from the cache: the request succeeds (its words are the model's, not ours)
        assert isinstance(hp.prompt(s.id, "Say hi.", max_tokens=8), str)
        hp.stop(s.id)
    finally:
        hp.close()


def test_offline_target_refuses_a_model_not_in_its_cache(tmp_path, monkeypatch):
    """Refused at once, saying what to run, and nothing recorded."""
    from hpcserve_jupyter.api import Hpcserve
    from hpcserve_jupyter.errors import BadInput

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    hp = Hpcserve(target_configs={"nodes": {"kind": "local", "offline": True}})
    try:
        with pytest.raises(BadInput, match="offline: true") as err:
            hp.launch("smollm2-135m-hf", backend="transformers", on="nodes", wait=False)
        assert "hpcserve pull smollm2-135m-hf --on nodes --backend transformers" in \
            (err.value.hint or "")
        assert hp.sessions() == []
        # a model that is no hub reference (a path, a package file) is not asked about
        s = hp.launch("smollm2-135m", on="nodes", wait=False)
        hp.stop(s.id)
    finally:
        hp.close()
