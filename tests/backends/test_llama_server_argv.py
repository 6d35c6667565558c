"""What the llama-server backend decides beyond the shared tables of test_engine_command_lines.py:
which binary runs, GPU layers from the recipe's GPUs, embeddings mode, the key kept out of argv,
and the routes the gateway and the metrics reader use. No engine runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcserve_jupyter.backends import get_backend
from hpcserve_jupyter.errors import BadInput
from hpcserve_jupyter.recipes import Catalog, Recipe
from hpcserve_jupyter.resolve import resolve
from hpcserve_jupyter.spec import ServeSpec

MODEL = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(autouse=True)
def _no_program_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLAMA_SERVER", raising=False)


def spec(tmp_path: Path, engine_args: dict[str, Any] | None = None,
         overrides: dict[str, Any] | None = None, **fields: Any) -> ServeSpec:
    """A GGUF recipe in a catalog directory, resolved as a launch resolves it."""
    data: dict[str, Any] = {"name": "tiny", "category": "inference", "model": MODEL,
                            "backends": ["llama-server"],
                            "engine_args": {"llama-server": engine_args or {}}, **fields}
    Recipe.model_validate(data)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return resolve("tiny", "llama-server", overrides, catalog=Catalog([tmp_path]))


def flag(argv: tuple[str, ...], name: str) -> str:
    assert argv.count(name) == 1, argv
    return argv[argv.index(name) + 1]


def test_the_program_is_the_setting_then_the_environment_then_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert spec(tmp_path).argv[0] == "llama-server"  # found by the target (beside python, PATH)
    monkeypatch.setenv("LLAMA_SERVER", "/opt/llama.cpp/bin/llama-server")
    assert spec(tmp_path).argv[0] == "/opt/llama.cpp/bin/llama-server"
    chosen = spec(tmp_path, {"llama_server": "/srv/b1/llama-server", "ctx-size": 512})
    assert chosen.argv[0] == "/srv/b1/llama-server"
    # The setting names the program; it never becomes a flag.
    assert not any("llama_server" in a for a in chosen.argv[1:])
    assert flag(chosen.argv, "--ctx-size") == "512"
    # A command-line override reaches it too (hpcserve launch --set engine_args.llama_server=...).
    over = spec(tmp_path, overrides={"engine_args.llama_server": "/scratch/llama-server"})
    assert over.argv[0] == "/scratch/llama-server"


@pytest.mark.parametrize("bad", ["", "  ", 3, True])
def test_a_program_setting_that_is_no_path_is_refused(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(BadInput, match="must be the path of the llama-server program"):
        spec(tmp_path, {"llama_server": bad})


def test_gpu_layers_follow_the_recipes_gpus_unless_engine_args_say(tmp_path: Path) -> None:
    assert flag(spec(tmp_path).argv, "--n-gpu-layers") == "0"
    two = spec(tmp_path, resources={"gpus": 2})
    assert flag(two.argv, "--n-gpu-layers") == "999"  # every layer, on both (split by layer)
    assert two.tensor_parallel == 2
    assert flag(spec(tmp_path, {"n-gpu-layers": 20}, resources={"gpus": 1}).argv,
                "--n-gpu-layers") == "20"


def test_embedding_recipes_serve_embeddings(tmp_path: Path) -> None:
    argv = spec(tmp_path, category="embedding").argv
    assert argv.count("--embeddings") == 1
    assert "--embeddings" not in spec(tmp_path).argv
    # ... unless the recipe switches it off; and llama.cpp's pooling flag passes through.
    assert "--embeddings" not in spec(tmp_path, {"embeddings": False},
                                      category="embedding").argv
    pooled = spec(tmp_path, {"pooling": "mean"}, category="embedding").argv
    assert flag(pooled, "--pooling") == "mean"


def test_metrics_are_always_on_and_the_key_never_in_argv(tmp_path: Path) -> None:
    resolved = spec(tmp_path, served_model_name="smol")
    assert resolved.argv.count("--metrics") == 1
    assert flag(resolved.argv, "--alias") == "smol" == resolved.served_model_name
    assert flag(resolved.argv, "--model") == MODEL
    assert "--api-key" not in resolved.argv and "{HPCSERVE_API_KEY}" not in resolved.argv
    assert resolved.secret_env == (("LLAMA_API_KEY", "api_key"),)
    assert resolved.uses_api_key is True


def test_the_routes_the_gateway_and_the_metrics_reader_use() -> None:
    engine = get_backend("llama-server")
    assert engine.health_path == "/health"
    counter = engine.token_counter
    assert counter is not None and counter.chat is None
    assert (counter.text.path, counter.text.field, counter.text.answer, counter.text.model) == (
        "/tokenize", "content", "tokens", False)
    assert (engine.metrics_path, engine.metrics_format) == ("/metrics", "llama-server")
