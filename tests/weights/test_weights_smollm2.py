"""End to end: `hpcserve pull smollm2-135m-hf` (the built-in recipe, for the transformers
backend) fetches the real SmolLM2 checkpoint the engine tests make from the Hub stand-in into a
fresh HF cache; the engine's environment then finds it there by repo id with the hub switched off
(HF_HUB_OFFLINE=1), as a launch from the cache will. No engine is started."""

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
from real_engines import MODEL_FILES, engine_python, hf_checkpoint

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
