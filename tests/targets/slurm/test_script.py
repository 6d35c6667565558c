"""Golden files of generated sbatch scripts, and their shell syntax (`bash -n`).

Regenerate after an intended change: HPCSERVE_UPDATE_GOLDEN=1 pytest tests/targets/slurm.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hpcserve_jupyter.recipes import Catalog
from hpcserve_jupyter.spec import resolve
from hpcserve_jupyter.targets.slurm.script import (
    JobOptions,
    build,
    sbatch_value,
    secrets_file,
    shell_word,
)

GOLDEN = Path(__file__).parent / "golden"
RECIPE = """\
name: big
category: inference
model: org/big-model
backends: [vllm, sglang]
resources: {gpus: 4, cpus: 16, memory: 64G, time: 4h}
"""


@pytest.fixture
def catalog(tmp_path):
    (tmp_path / "big.yaml").write_text(RECIPE)
    return Catalog([tmp_path])


def cases(catalog):
    opts = JobOptions(workdir="/home/alice/.hpcserve/sessions/0a1b2c3d", partition="gpu",
                      account="proj-42", qos="normal", constraint="a100",
                      sbatch_extra=("--exclusive",), modules=("cuda/12.4", "python/3.11"),
                      python="/home/alice/envs/serve/bin/python", env=(("HF_HOME", "/scratch/hf"),))
    container = JobOptions(workdir="/home/alice/.hpcserve/sessions/0a1b2c3d",
                           container_runtime="apptainer",
                           container_image="/images/vllm-openai.sif",
                           container_binds=("/scratch",), gpu_request="gpus-per-node")
    return {
        "vllm-tp4": build(resolve("big", "vllm", catalog=catalog), opts, name="big-1",
                          session_id="0a1b2c3d"),
        "sglang-4-replicas": build(resolve("big", "sglang", {"gpu_per_replica": "1"},
                                           catalog=catalog), opts, name="big-2",
                                   session_id="0a1b2c3d"),
        "vllm-apptainer": build(resolve("big", "vllm", catalog=catalog), container,
                                name="big-3", session_id="0a1b2c3d"),
        "vllm-2-nodes-ray": build(resolve("big", "vllm", {"nodes": "2", "gpu_per_replica": "8"},
                                          catalog=catalog), opts, name="big-4",
                                  session_id="0a1b2c3d"),
    }


def test_scripts_match_golden_files_and_parse(catalog, tmp_path):
    for name, text in cases(catalog).items():
        path = GOLDEN / f"{name}.sh"
        if os.environ.get("HPCSERVE_UPDATE_GOLDEN"):
            path.write_text(text)
        assert text == path.read_text(), f"{name} changed; see {path}"
        check = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
        assert check.returncode == 0, check.stderr


def test_tensor_parallel_replicas_and_gpu_slices(catalog):
    text = cases(catalog)["sglang-4-replicas"]
    assert "REPLICAS=4" in text and "--gres=gpu:4" in text
    assert '${ALL_GPUS[*]:$((r * 1)):1}' in text
    assert "--tp-size" not in text  # one GPU per replica: no tensor parallel
    assert '--tensor-parallel-size 4' in cases(catalog)["vllm-tp4"]


def test_shell_words_quote_everything_but_placeholders():
    assert shell_word("{HPCSERVE_PORT}") == '"${PORT}"'
    assert shell_word("http://{HPCSERVE_HOST}:{HPCSERVE_PORT}/x") == \
        'http://"${BIND_HOST}":"${PORT}"/x'
    assert shell_word("$(touch /tmp/x); `id`") == "'$(touch /tmp/x); `id`'"
    assert shell_word("") == "''"


@pytest.mark.parametrize("value", ["gpu\n#SBATCH --uid=0", "a b", "x;y", "$(id)", ""])
def test_sbatch_values_refuse_breaking_out(value):
    with pytest.raises(ValueError):
        sbatch_value(value, "partition")


def test_extra_sbatch_lines_must_be_options():
    opts = JobOptions(workdir="/w", sbatch_extra=("rm -rf /",))
    with pytest.raises(ValueError, match="starting with --"):
        build(resolve("smollm2-135m"), opts, name="x", session_id="s")


def test_secrets_file_is_quoted():
    assert secrets_file({"HPCSERVE_API_KEY": "a'b"}) == "HPCSERVE_API_KEY='a'\"'\"'b'\n"
