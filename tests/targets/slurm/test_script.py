"""Golden files of generated sbatch scripts, and their shell syntax (`bash -n`).

Regenerate after an intended change: HPCSERVE_UPDATE_GOLDEN=1 pytest tests/targets/slurm.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from hpcserve_jupyter.recipes import Catalog
from hpcserve_jupyter.resolve import resolve
from hpcserve_jupyter.targets.slurm import script
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
        "sglang-2-nodes": build(resolve("big", "sglang", {"nodes": "2", "gpu_per_replica": "8"},
                                        catalog=catalog), opts, name="big-5",
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


def test_sbatch_value_errors_say_what_is_allowed():
    with pytest.raises(ValueError, match=r"partition 'a b' contains characters SLURM does not "
                                         r"accept there; allowed: letters, digits and _"):
        sbatch_value("a b", "partition")
    with pytest.raises(ValueError, match=r"one non-empty line of letters, digits"):
        sbatch_value("gpu\n", "partition")


@pytest.mark.parametrize("extra", [
    "--comment=x && touch /tmp/x",  # stray words: sbatch would refuse them only after upload
    "--comment x y",
    "--exclusive\r--uid=0",  # split() cuts at \r: one entry must be one printable line
    "--comment=a\tb",
])
def test_extra_sbatch_options_refuse_stray_words_and_control_characters(extra):
    opts = JobOptions(workdir="/w", sbatch_extra=(extra,))
    with pytest.raises(ValueError, match="extra #SBATCH option"):
        build(resolve("smollm2-135m"), opts, name="x", session_id="s")


def test_extra_sbatch_options_may_take_separate_values():
    opts = JobOptions(workdir="/w", sbatch_extra=("--constraint a100 --exclusive",
                                                  "--comment=ok"))
    text = build(resolve("smollm2-135m"), opts, name="x", session_id="s")
    assert "#SBATCH --constraint a100 --exclusive\n#SBATCH --comment=ok\n" in text


@pytest.mark.parametrize("name", ["X=1; touch /tmp/x; Y", "r6\n", "1ABC", "A-B", ""])
def test_exported_names_must_be_variable_names(name):
    # `export NAME=...` writes the name unquoted: a target's env had no check at all.
    opts = JobOptions(workdir="/w", env=((name, "v"),))
    with pytest.raises(ValueError, match="is not an environment variable name"):
        build(resolve("smollm2-135m"), opts, name="x", session_id="s")


@pytest.mark.parametrize(("opts", "overrides", "what"), [
    ({"modules": ("cuda\0",)}, {}, "modules"),
    ({"python": "/py\0"}, {}, "python"),
    ({"bind_host": "0.0.0.0\0"}, {}, "bind_host"),
    ({"env": (("A", "b\0"),)}, {}, "'A'"),
    ({"container_runtime": "apptainer", "container_image": "/i\0.sif"}, {},
     "the container image"),
    ({"container_runtime": "apptainer", "container_image": "/i.sif",
      "container_binds": ("/s\0",)}, {}, "container.binds"),
    ({}, {"engine_args.chat_format": "a\0b"}, "the value of --chat_format"),
])
def test_nul_bytes_are_refused_by_name(opts, overrides, what):
    # bash refuses a script holding a NUL ("cannot execute binary file"): the job would fail.
    spec = resolve("smollm2-135m", overrides=overrides)
    with pytest.raises(ValueError, match=re.escape(what) + ".* NUL byte"):
        build(spec, JobOptions(workdir="/w", **opts), name="x", session_id="s")


def test_env_values_with_placeholders_are_set_per_replica(tmp_path):
    # qdrant takes its port and host from the environment: they differ per replica.
    (tmp_path / "q.yaml").write_text("name: q\ncategory: vector-db\nbackends: [qdrant]\n"
                                     "replicas: {count: 2}\n")
    spec = resolve("q", catalog=Catalog([tmp_path]))
    text = build(spec, JobOptions(workdir="/w", bind_host="10.0.0.1"), name="q", session_id="s")
    assert "export QDRANT__SERVICE__HTTP_PORT=\"${PORT}\"" in text
    assert "export QDRANT__SERVICE__HOST=\"${BIND_HOST}\"" in text
    assert not re.search(r"(?<!\$)\{HPCSERVE_", text)  # every placeholder filled in
    loop = text[text.index("for ((r = 0; r < REPLICAS"):text.index("# Publish the endpoint")]
    assert "QDRANT__SERVICE__HTTP_PORT" in loop  # after PORT is chosen, inside the replica
    assert "export QDRANT__TELEMETRY_DISABLED=true\n" in text[:text.index(loop)]
    check = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr


# ------------------------------------------------------------------ replicas spanning nodes

SPANNING = {"nodes": "2", "gpu_per_replica": "8"}


def exec_line(text: str) -> list[str]:
    """The words of the command a replica's subshell execs."""
    line = next(x for x in text.splitlines() if x.startswith("    exec "))
    return shlex.split(line.strip()[len("exec "):])


def test_per_node_launch_gives_each_node_its_rank_and_the_heads_address(catalog, tmp_path):
    """What srun's task on node R runs, through a real bash: the engine's own arguments
    (a hostile one among them stays one literal word) plus its rank and the head's address."""
    spec = resolve("big", "sglang", {**SPANNING, "engine_args.chat-template": "a b'c $(touch x)"},
                   catalog=catalog)
    text = build(spec, JobOptions(workdir="/w"), name="big", session_id="s")
    words = exec_line(text)
    assert words[:3] == ["srun", "--nodes=$SLURM_JOB_NUM_NODES", "--ntasks-per-node=1"]
    assert words[3:5] == ["bash", "-c"] and len(words) == 6
    assert "export HEAD_IP DIST_PORT BIND_HOST\n" in text and "    export PORT\n" in text
    recorder = tmp_path / "engine"  # stands in for the interpreter: prints the argv it got
    recorder.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    recorder.chmod(0o755)
    for rank in ("0", "1"):
        env = {"PATH": os.environ["PATH"], "HPCSERVE_PYTHON": str(recorder), "PORT": "8123",
               "BIND_HOST": "0.0.0.0", "HPCSERVE_API_KEY": "k", "SLURM_JOB_NUM_NODES": "2",
               "SLURM_PROCID": rank, "HEAD_IP": "10.1.2.3", "DIST_PORT": "29500"}
        run = subprocess.run(["bash", "-c", words[5]], env=env, cwd=tmp_path,
                             capture_output=True, text=True, check=True)
        argv = run.stdout.splitlines()
        assert argv[:2] == ["-m", "sglang.launch_server"]
        assert argv[argv.index("--port") + 1] == "8123"
        assert argv[argv.index("--chat-template") + 1] == "a b'c $(touch x)"
        assert argv[-6:] == ["--nnodes", "2", "--node-rank", rank,
                             "--dist-init-addr", "10.1.2.3:29500"]
    assert not (tmp_path / "x").exists()


def test_mpi_launch_starts_a_rank_per_gpu_behind_the_launcher(tmp_path):
    (tmp_path / "t.yaml").write_text("name: t\ncategory: inference\nmodel: org/m\n"
                                     "backends: [trtllm]\nresources: {gpus: 4}\n")
    spec = resolve("t", overrides=SPANNING, catalog=Catalog([tmp_path]))
    opts = JobOptions(workdir="/w", container_runtime="apptainer", container_image="/i.sif")
    text = build(spec, opts, name="t", session_id="s")
    words = exec_line(text)
    assert words[:4] == ["srun", "--nodes=$SLURM_JOB_NUM_NODES", "--ntasks-per-node=4",
                         "--mpi=pmix"]
    # inside the container: the launcher, then the engine with its own arguments
    assert words[4:9] == ["apptainer", "exec", "--nv", "/i.sif", "trtllm-llmapi-launch"]
    assert words[9] == "trtllm-serve" and "--pp_size" in words
    assert "# Multi-node: one MPI world, a rank per GPU on every node" in text
    assert "ray" not in text.lower()  # nothing of another engine's launch


def test_only_a_ray_launch_starts_ray(catalog):
    sglang = build(resolve("big", "sglang", SPANNING, catalog=catalog), JobOptions(workdir="/w"),
                   name="big", session_id="s")
    assert "ray" not in sglang.lower()
    # a multi-node job whose replicas each fit on a node starts no multi-node launch at all
    vllm = build(resolve("big", "vllm", {"nodes": "2", "gpu_per_replica": "4"}, catalog=catalog),
                 JobOptions(workdir="/w"), name="big", session_id="s")
    assert "Multi-node" not in vllm and "srun" not in vllm
    assert "RAY_PORT" in build(resolve("big", "vllm", SPANNING, catalog=catalog),
                               JobOptions(workdir="/w"), name="big", session_id="s")


def test_per_node_launches_run_one_replica_per_job(catalog):
    spec = resolve("big", "sglang", {"nodes": "4", "gpu_per_replica": "8"}, catalog=catalog)
    assert spec.replicas == 2 and spec.multinode is not None
    with pytest.raises(ValueError, match="only as the job's one replica, not 2"):
        build(spec, JobOptions(workdir="/w"), name="big", session_id="s")


def test_the_slurm_target_names_no_engine():
    """Engines declare what they need (backends/); the target only knows launch modes."""
    from hpcserve_jupyter.backends import backend_names

    # `task` runs a task recipe's own command: no engine, and SLURM's own word for a process
    names = [*(set(backend_names()) - {"task"}), "sglang", "tensorrt", "llama.cpp", "llama_cpp"]
    source = Path(script.__file__).parent
    for path in sorted(source.glob("*.py")):
        text = path.read_text().lower()
        found = [n for n in names if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]
        assert not found, f"{path.name} names {found}"
