"""Test repos for the stand-in and pointing the real huggingface_hub client at it.

huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE and the telemetry switch
once, when it is imported; a test process may have imported it before (another test, litellm).
So `point_client_at` imports it first (with the process's own environment), then sets the
environment (for subprocesses, such as the `hpcserve` CLI) and the same values on
`huggingface_hub.constants` and on the module-level `HfApi` behind `list_repo_files()` and the
like; all of it is undone after the test.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

BIG = 12 * 1024 * 1024  # over the client's 10 MiB read chunk: a cut after it resumes by Range
TOKEN = "hf_standin_granted_token"
OTHER_TOKEN = "hf_standin_token_without_access"

TINY = "hpcserve-test/tiny-model"
GATED = "hpcserve-test/gated-model"
GGUF = "hpcserve-test/tiny-gguf"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def tiny_model(folder: Path, *, seed: int = 1, version: str = "main") -> Path:
    """An HF-format checkpoint shape: config, tokenizer files, safetensors (12 MiB, LFS),
    a pytorch .bin the HF engines do not need, a README and a file in a subfolder."""
    return write_files(folder, {
        "config.json": f'{{"model_type": "llama", "version": "{version}"}}'.encode(),
        "generation_config.json": b'{"do_sample": false}',
        "tokenizer.json": b'{"model": {"type": "BPE"}}' + payload(seed + 10, 3000),
        "tokenizer_config.json": b'{"model_max_length": 2048}',
        "chat_template.jinja": b"{% for m in messages %}{{ m.content }}{% endfor %}",
        "model.safetensors": payload(seed, BIG),
        "pytorch_model.bin": payload(seed + 20, 300_000),
        "README.md": f"# tiny model ({version})\n".encode(),
        "original/params.json": b'{"dim": 64}',
    })


def gguf_model(folder: Path) -> Path:
    return write_files(folder, {
        "tiny-Q4_K_M.gguf": b"GGUF" + payload(30, 200_000),
        "tiny-Q8_0.gguf": b"GGUF" + payload(31, 300_000),
        "README.md": b"# tiny gguf\n",
    })


def point_client_at(monkeypatch: pytest.MonkeyPatch, url: str, hf_home: Path) -> None:
    """HF_ENDPOINT and a private HF_HOME for this test, no token, no telemetry, online."""
    try:  # loaded now, with the process's own environment, so that the values set below
        import huggingface_hub.constants as constants  # are undone after the test
        import huggingface_hub.hf_api as hf_api
    except ImportError:
        constants = hf_api = None  # type: ignore[assignment]
    cache = hf_home / "hub"
    env = {"HF_ENDPOINT": url, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(cache),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_SYMLINKS_WARNING": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "HF_HUB_ENABLE_HF_TRANSFER"):
        monkeypatch.delenv(key, raising=False)
    if constants is None:
        return
    for name, value in {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(cache),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_TELEMETRY": True,
    }.items():
        monkeypatch.setattr(constants, name, value)
    # the instance behind list_repo_files() & co., made at import
    monkeypatch.setattr(hf_api.api, "endpoint", url)


def use_recipes(monkeypatch: pytest.MonkeyPatch, folder: Path,
                recipes: dict[str, dict[str, object]]) -> Path:
    """Inference recipes `{name: fields}` written to `folder`, the user recipe dir from now."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, fields in recipes.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(
            {"name": name, "category": "inference", **fields}))
    monkeypatch.setenv("HPCSERVE_RECIPES", str(folder))
    return folder
