"""Pinned command lines of the two engines that also run for real in the suite."""

from hpcserve_jupyter.backends import backend_names, get_backend
from hpcserve_jupyter.recipes import Recipe
from hpcserve_jupyter.resolve import resolve
from hpcserve_jupyter.spec import HOST, PORT, PYTHON


def test_all_documented_engines_are_registered():
    assert set(backend_names()) >= {"vllm", "sglang", "transformers", "trtllm", "tgi",
                                    "llama-cpp", "chroma", "qdrant"}
    for name in backend_names():
        assert get_backend(name).name == name


def test_llama_cpp_command_line():
    spec = resolve("smollm2-135m")
    assert spec.argv == (
        PYTHON, "-m", "llama_cpp.server", "--model", spec.model,
        "--model_alias", "smollm2-135m", "--host", HOST, "--port", PORT,
        "--interrupt_requests", "false", "--n_gpu_layers", "0", "--n_ctx", "2048")
    # The key goes through the environment (pydantic-settings), never on the command line.
    assert spec.secret_env == (("API_KEY", "api_key"),)
    assert not any("HPCSERVE_API_KEY" in a for a in spec.argv)


def test_llama_cpp_gpu_and_embedding_flags():
    from hpcserve_jupyter.backends.base import Context

    r = Recipe.model_validate({"name": "e", "category": "embedding", "model": "/m.gguf",
                               "backends": ["llama-cpp"], "resources": {"gpus": 1}})
    argv = get_backend("llama-cpp").argv(Context(r, "/m.gguf", "e", 1, 1))
    assert argv[argv.index("--n_gpu_layers") + 1] == "-1"
    assert argv[argv.index("--embedding") + 1] == "true"


def test_vllm_command_line():
    spec = resolve("smollm2-135m-hf", "vllm", {"engine_args.enforce-eager": "true"})
    assert spec.argv == (
        PYTHON, "-m", "vllm.entrypoints.openai.api_server",
        "--model", "HuggingFaceTB/SmolLM2-135M-Instruct",
        "--served-model-name", "smollm2-135m-hf", "--host", HOST, "--port", PORT,
        "--max-model-len", "2048", "--enforce-eager", "--dtype", "float32")
    assert spec.secret_env == (("VLLM_API_KEY", "api_key"),)
    assert spec.health_path == "/health"


def test_vllm_tensor_parallel():
    spec = resolve("qwen2.5-72b-instruct", "vllm")
    assert spec.argv[spec.argv.index("--tensor-parallel-size") + 1] == "4"
    assert "--pipeline-parallel-size" not in spec.argv
