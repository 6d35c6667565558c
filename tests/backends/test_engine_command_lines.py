"""Pin the exact command line, environment and probes of the SGLang, transformers, TRT-LLM, TGI,
llama-server, Chroma and Qdrant backends, so a changed flag is a failing test rather than a broken
launch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpcserve_jupyter.backends import Context, get_backend
from hpcserve_jupyter.recipes import Catalog, Recipe
from hpcserve_jupyter.resolve import resolve
from hpcserve_jupyter.spec import ServeSpec

# The placeholders are spelled out, not imported: renaming one must fail here too.
PY, HOST, PORT = "{HPCSERVE_PYTHON}", "{HPCSERVE_HOST}", "{HPCSERVE_PORT}"
KEY = "{HPCSERVE_API_KEY}"
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
VECTOR_ENGINES = ("chroma", "qdrant")


@pytest.fixture(autouse=True)
def _no_llama_server_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """llama-server's program may come from $LLAMA_SERVER; these tables pin the default."""
    monkeypatch.delenv("LLAMA_SERVER", raising=False)


def make_recipe(backend: str, engine_args: dict[str, Any] | None = None, **fields: Any) -> Recipe:
    vector = backend in VECTOR_ENGINES
    data: dict[str, Any] = {
        "name": "vec" if vector else "qwen",
        "category": "vector-db" if vector else "inference",
        "backends": [backend],
        "engine_args": {backend: engine_args or {}},
    }
    if not vector:
        data["model"] = MODEL
    data.update(fields)
    return Recipe.model_validate(data)


def command(backend: str, engine_args: dict[str, Any] | None = None, *, tp: int = 1,
            pp: int = 1, **fields: Any) -> list[str]:
    recipe = make_recipe(backend, engine_args, **fields)
    ctx = Context(recipe=recipe, model=recipe.model, served_model_name=recipe.name,
                  tensor_parallel=tp, pipeline_parallel=pp)
    return get_backend(backend).argv(ctx)


def resolved(tmp_path: Path, backend: str, engine_args: dict[str, Any] | None = None,
             overrides: dict[str, Any] | None = None, **fields: Any) -> ServeSpec:
    """The full path a launch takes: a YAML recipe in a catalog directory, resolved."""
    recipe = make_recipe(backend, engine_args, **fields)
    (tmp_path / f"{recipe.name}.yaml").write_text(
        yaml.safe_dump(recipe.model_dump(exclude_none=True)), encoding="utf-8")
    return resolve(recipe.name, backend, overrides, catalog=Catalog([tmp_path]))


# ------------------------------------------------------------------ argv, one GPU, no engine_args

BASE_ARGV = {
    "sglang": [PY, "-m", "sglang.launch_server", "--model-path", MODEL,
               "--served-model-name", "qwen", "--host", HOST, "--port", PORT, "--api-key", KEY,
               "--enable-metrics"],
    # A recipe without GPUs keeps transformers on the CPU (its --device auto takes a GPU).
    "transformers": ["transformers", "serve", MODEL, "--host", HOST, "--port", PORT,
                     "--device", "cpu"],
    "trtllm": ["trtllm-serve", MODEL, "--served_model_name", "qwen",
               "--host", HOST, "--port", PORT],
    "tgi": ["text-generation-launcher", "--model-id", MODEL, "--hostname", HOST, "--port", PORT],
    # No GPUs in the recipe: no layer offloaded; the key comes from LLAMA_API_KEY (below).
    "llama-server": ["llama-server", "--model", MODEL, "--alias", "qwen", "--host", HOST,
                     "--port", PORT, "--metrics", "--n-gpu-layers", "0"],
    "chroma": ["chroma", "run", "--host", HOST, "--port", PORT],
    "qdrant": ["qdrant"],
}


@pytest.mark.parametrize("backend", sorted(BASE_ARGV))
def test_argv_with_one_gpu_and_no_engine_args(backend: str) -> None:
    assert command(backend) == BASE_ARGV[backend]


# ------------------------------------------- argv, tensor parallel 4, user engine_args of each kind

# engine_args chosen from each engine's real flags (trtllm's from tensorrt_llm/commands/serve.py:
# --kv_cache_free_gpu_memory_fraction, as trtllm-serve has no --free_gpu_memory_fraction): a
# number, a float, bool true (bare flag), bool false (left out), and a list (one flag then values
# for argparse, the flag repeated for clap/click).
TP4_CASES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "sglang": (
        {"mem-fraction-static": 0.8, "trust-remote-code": True, "enable-metrics": True,
         "log-requests-target": ["stdout", "/tmp/req"], "context-length": 4096},
        ["--tp-size", "4", "--mem-fraction-static", "0.8", "--trust-remote-code",
         "--log-requests-target", "stdout", "/tmp/req", "--context-length", "4096"],
    ),
    "tgi": (
        {"max-input-tokens": 2048, "cuda-memory-fraction": 0.9, "trust-remote-code": True,
         "disable-custom-kernels": False, "cors-allow-origin": ["http://a.test", "http://b.test"]},
        ["--num-shard", "4", "--max-input-tokens", "2048", "--cuda-memory-fraction", "0.9",
         "--trust-remote-code", "--cors-allow-origin", "http://a.test",
         "--cors-allow-origin", "http://b.test"],
    ),
    "trtllm": (
        {"max_batch_size": 64, "kv_cache_free_gpu_memory_fraction": 0.85,
         "trust_remote_code": True, "enable_chunked_prefill": False,
         "custom_module_dirs": ["/opt/a", "/opt/b"]},
        ["--tp_size", "4", "--max_batch_size", "64", "--kv_cache_free_gpu_memory_fraction",
         "0.85", "--trust_remote_code", "--custom_module_dirs", "/opt/a",
         "--custom_module_dirs", "/opt/b"],
    ),
    # transformers serve has no tensor-parallel flag: nothing is added for tp=4.
    "transformers": (
        {"continuous-batching": True, "trust-remote-code": False, "dtype": "bfloat16",
         "default-seed": 42},
        ["--continuous-batching", "--dtype", "bfloat16", "--default-seed", "42"],
    ),
    # llama-server splits layers over the GPUs it sees (--split-mode layer): no tp flag.
    "llama-server": (
        {"ctx-size": 4096, "rope-freq-scale": 0.5, "cont-batching": True, "mmap": False,
         "lora": ["/m/a.gguf", "/m/b.gguf"]},
        ["--ctx-size", "4096", "--rope-freq-scale", "0.5", "--cont-batching",
         "--lora", "/m/a.gguf", "--lora", "/m/b.gguf"],
    ),
}


@pytest.mark.parametrize("backend", sorted(TP4_CASES))
def test_argv_with_tensor_parallel_4_and_engine_args(backend: str) -> None:
    args, tail = TP4_CASES[backend]
    assert command(backend, args, tp=4) == BASE_ARGV[backend] + tail


@pytest.mark.parametrize(("backend", "tail"), [
    ("sglang", ["--tp-size", "4", "--pp-size", "2"]),
    ("trtllm", ["--tp_size", "4", "--pp_size", "2"]),
    ("tgi", ["--num-shard", "4"]),  # TGI has no pipeline parallelism
    ("transformers", []),
])
def test_argv_with_pipeline_parallel(backend: str, tail: list[str]) -> None:
    assert command(backend, tp=4, pp=2) == BASE_ARGV[backend] + tail


def test_sglang_serves_metrics_unless_the_recipe_turns_them_off() -> None:
    argv = command("sglang", {"enable-metrics": False})
    assert "--enable-metrics" not in argv and argv == [
        a for a in BASE_ARGV["sglang"] if a != "--enable-metrics"]


def test_sglang_serves_embedding_recipes_as_embedding_models() -> None:
    assert command("sglang", category="embedding") == BASE_ARGV["sglang"] + ["--is-embedding"]
    # The recipe can still switch it off.
    assert command("sglang", {"is-embedding": False}, category="embedding") == BASE_ARGV["sglang"]


def test_transformers_device_follows_the_recipes_gpus_unless_engine_args_say() -> None:
    assert command("transformers", {"device": "cuda:1"})[-2:] == ["--device", "cuda:1"]
    assert command("transformers", {"device": "cuda:1"}).count("--device") == 1
    assert "--device" not in command("transformers", resources={"gpus": 1})


def test_the_sessions_model_is_the_name_each_engine_answers_to(tmp_path: Path) -> None:
    # transformers serve cannot rename its model: it answers only to the model as given to it.
    assert resolved(tmp_path, "transformers").served_model_name == MODEL
    assert resolved(tmp_path, "transformers",
                    served_model_name="mine").served_model_name == MODEL
    # Engines that take a served name on their command line answer to the recipe's.
    assert resolved(tmp_path, "sglang").served_model_name == "qwen"
    spec = resolved(tmp_path, "trtllm", served_model_name="mine")
    assert spec.served_model_name == "mine"
    assert spec.argv[spec.argv.index("--served_model_name") + 1] == "mine"


def test_vector_db_argv_with_engine_args() -> None:
    assert command("chroma", {"path": "/scratch/chroma"}) == BASE_ARGV["chroma"] + [
        "--path", "/scratch/chroma"]
    assert command("qdrant", {"disable-telemetry": True, "force-snapshot": False,
                              "snapshot": ["/s/a.snapshot:a", "/s/b.snapshot:b"]}) == [
        "qdrant", "--disable-telemetry",
        "--snapshot", "/s/a.snapshot:a", "--snapshot", "/s/b.snapshot:b"]


# ------------------------------------------------------- the resolved spec: env, probes, keys

EXPECTED_SPEC = {
    # backend: (env, secret_env, health_path, api_flavour, image, uses_api_key)
    "sglang": ((), (), "/health", "openai", "lmsysorg/sglang:latest", True),
    "transformers": ((), (), "/health", "openai", None, False),
    "trtllm": ((), (), "/health", "openai", "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc13",
               False),
    "tgi": ((("USAGE_STATS", "off"),), (("API_KEY", "api_key"),), "/health", "openai",
            "ghcr.io/huggingface/text-generation-inference:latest", True),
    "llama-server": ((), (("LLAMA_API_KEY", "api_key"),), "/health", "openai",
                     "ghcr.io/ggml-org/llama.cpp:server", True),
    "chroma": ((), (), "/api/v2/healthcheck", "chroma", "chromadb/chroma:latest", False),
    "qdrant": (
        (("QDRANT__SERVICE__HOST", HOST), ("QDRANT__SERVICE__HTTP_PORT", PORT),
         ("QDRANT__TELEMETRY_DISABLED", "true")),
        (("QDRANT__SERVICE__API_KEY", "api_key"),), "/readyz", "qdrant", "qdrant/qdrant:latest",
        True,
    ),
}


@pytest.mark.parametrize("backend", sorted(EXPECTED_SPEC))
def test_resolved_spec(tmp_path: Path, backend: str) -> None:
    spec = resolved(tmp_path, backend)
    env, secret_env, health, flavour, image, uses_key = EXPECTED_SPEC[backend]
    assert spec.backend == backend
    assert spec.argv == tuple(BASE_ARGV[backend])
    assert spec.env == env
    assert spec.secret_env == secret_env
    assert spec.health_path == health
    assert spec.api_flavour == flavour
    assert spec.image == image
    assert spec.uses_api_key is uses_key


def test_registered_classes_and_categories() -> None:
    expected = {
        "sglang": ("SGLang", {"inference", "embedding"}),
        "transformers": ("Transformers", {"inference"}),
        "trtllm": ("TRTLLM", {"inference"}),
        "tgi": ("TGI", {"inference"}),
        "llama-server": ("LlamaServer", {"inference", "embedding"}),
        "chroma": ("Chroma", {"vector-db"}),
        "qdrant": ("Qdrant", {"vector-db"}),
    }
    for name, (cls, categories) in expected.items():
        engine = get_backend(name)
        assert (type(engine).__name__, engine.name, set(engine.categories)) == (
            cls, name, categories)


def test_gpus_in_the_recipe_become_each_engines_tensor_parallel_flag(tmp_path: Path) -> None:
    four_gpus = {"resources": {"gpus": 4}}
    assert resolved(tmp_path, "sglang", **four_gpus).argv[-2:] == ("--tp-size", "4")
    assert resolved(tmp_path, "tgi", **four_gpus).argv[-2:] == ("--num-shard", "4")
    assert resolved(tmp_path, "trtllm", **four_gpus).argv[-2:] == ("--tp_size", "4")
    # transformers has no such flag; with GPUs it picks its device itself (--device auto).
    assert resolved(tmp_path, "transformers", **four_gpus).argv == (
        "transformers", "serve", MODEL, "--host", HOST, "--port", PORT)
    # One replica over two nodes of four GPUs: tensor parallel inside a node, pipeline across.
    two_nodes = {"resources": {"gpus": 4, "nodes": 2}}
    spec = resolved(tmp_path, "sglang", **two_nodes)
    assert spec.argv[-4:] == ("--tp-size", "4", "--pp-size", "2")
    assert resolved(tmp_path, "trtllm", **two_nodes).argv[-4:] == (
        "--tp_size", "4", "--pp_size", "2")


def test_command_line_overrides_reach_the_engine_flags(tmp_path: Path) -> None:
    spec = resolved(tmp_path, "tgi", {"max-input-tokens": 2048},
                    overrides={"engine_args.max-input-tokens": "1024",
                               "engine_args.trust-remote-code": "true",
                               "engine_args.disable-custom-kernels": "false"})
    assert spec.argv == tuple(BASE_ARGV["tgi"] + [
        "--max-input-tokens", "1024", "--trust-remote-code"])


def test_recipe_env_is_kept_beside_the_engine_env(tmp_path: Path) -> None:
    spec = resolved(tmp_path, "qdrant", env={"QDRANT__SERVICE__GRPC_PORT": "7334"})
    assert dict(spec.env) == {
        "QDRANT__SERVICE__GRPC_PORT": "7334",
        "QDRANT__SERVICE__HOST": HOST,
        "QDRANT__SERVICE__HTTP_PORT": PORT,
        "QDRANT__TELEMETRY_DISABLED": "true",
    }


# -------------------------------------------------------------------------- no secret, ever

@pytest.mark.parametrize("backend", sorted(EXPECTED_SPEC))
def test_api_key_is_only_ever_a_placeholder(tmp_path: Path, backend: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-real-secret-4f1c9"
    for var in ("API_KEY", "HPCSERVE_API_KEY", "QDRANT__SERVICE__API_KEY", "VLLM_API_KEY",
                "LLAMA_API_KEY"):
        monkeypatch.setenv(var, secret)
    spec = resolved(tmp_path, backend)
    assert secret not in json.dumps(spec.to_dict())

    argv = list(spec.argv)
    key_flags = [i for i, arg in enumerate(argv) if arg in ("--api-key", "--api_key")]
    if backend == "sglang":  # a flag-only engine: the placeholder right after its flag
        assert key_flags == [argv.index(KEY) - 1]
        assert argv.count(KEY) == 1
    else:  # the others take the key from secret_env, or have none
        assert key_flags == []
        assert KEY not in argv
    assert all(KEY not in value for _, value in spec.env)
    # secret_env names the environment variable and the LaunchRequest secret, never a value.
    assert all(name == "api_key" for _, name in spec.secret_env)
    assert bool(spec.secret_env) == (backend in ("tgi", "qdrant", "llama-server"))
