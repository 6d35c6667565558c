"""One-off batch jobs with real vLLM (the CPU build in <repo>/.venv-vllm): the engine's own
batch runner (`run-batch`) and the generic runner on the same file, and the choice between
them. Skips without the vLLM environment, except on CI (see test_vllm_real.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from real_engines import hf_checkpoint, unavailable

from facade_fixtures import make_facade
from hpcserve_jupyter.errors import BadInput
from hpcserve_jupyter.jobmanager import choose_runner
from hpcserve_jupyter.jobs import JobState
from hpcserve_jupyter.resolve import resolve
from hpcserve_jupyter.spec import BATCH_INPUT, BATCH_OUTPUT

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


def test_vllm_declares_its_batch_runner_and_auto_falls_back():
    spec = resolve("smollm2-135m-hf", "vllm")
    argv = list(spec.batch_argv)
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.run_batch"]
    assert argv[argv.index("-i") + 1] == BATCH_INPUT and argv[argv.index("-o") + 1] == BATCH_OUTPUT
    assert "--host" not in argv and "--port" not in argv  # run-batch serves no HTTP
    assert set(spec.batch_urls) == {CHAT, "/v1/embeddings"}
    assert choose_runner(spec, {CHAT}, "engine") == "engine"
    assert choose_runner(spec, {CHAT}, "auto") == "engine"  # measured faster: the default
    assert choose_runner(spec, {CHAT}, "generic") == "generic"
    # run-batch has no /v1/completions: auto serves such a file with the generic runner ...
    assert choose_runner(spec, {CHAT, COMPLETIONS}, "auto") == "generic"
    # ... and asking for the engine's runner says why not
    with pytest.raises(BadInput, match="does not answer /v1/completions"):
        choose_runner(spec, {COMPLETIONS}, "engine")
    with pytest.raises(BadInput, match="no batch runner of its own"):
        choose_runner(resolve("smollm2-135m"), {CHAT}, "engine")


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not VLLM_PYTHON.exists():
        unavailable(f"no vLLM environment: {VLLM_PYTHON} is missing; "
                    "create it with scripts/setup-vllm-env.sh")
    return hf_checkpoint(VLLM_PYTHON, tmp_path_factory.mktemp("smollm2-hf"),
                         "create it with scripts/setup-vllm-env.sh")


def overrides(model: Path) -> dict[str, object]:
    return {"model": str(model), "engine_args.enforce-eager": True,
            "env.VLLM_CPU_KVCACHE_SPACE": "1", "env.HF_HUB_OFFLINE": "1"}


@pytest.mark.vllm
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("runner", ["engine", "generic"])
def test_a_batch_job_on_vllm(vllm_model, tmp_path, runner):
    lines = [{"custom_id": f"v{i}", "method": "POST", "url": CHAT,
              "body": {"messages": [{"role": "user", "content": f"Count to {i + 2}."}],
                       "max_tokens": 8, "temperature": 0}} for i in range(6)]
    lines[2]["body"]["max_tokens"] = -1  # well formed, refused by the engine
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    targets = {"local": {"kind": "local", "python": str(VLLM_PYTHON)}}
    with make_facade(tmp_path / "home", target_configs=targets) as hp:
        job = hp.submit_job("smollm2-135m-hf", path, backend="vllm", runner=runner,
                            **overrides(vllm_model))
        final = job.wait(timeout=900)
        assert final.state == JobState.DONE, (final.reason, final.log_tail)
        out = [json.loads(x) for x in Path(final.output).read_text().splitlines()]
        by_id = {x["custom_id"]: x for x in out}
        assert sorted(by_id) == [f"v{i}" for i in range(6)]
        assert by_id["v2"]["error"] is not None and final.failed == 1
        for cid in ("v0", "v1", "v3"):
            body = by_id[cid]["response"]["body"]
            assert by_id[cid]["error"] is None and body["usage"]["completion_tokens"] <= 8
        log = hp.job_logs(job.id, tail=0)
        ran_batch = "running the engine's batch runner over 6 requests" in log
        assert ran_batch == (runner == "engine")
        job_json = json.loads((Path(final.handle["jobdir"]) / "job.json").read_text())
        assert job_json["runner"] == runner
