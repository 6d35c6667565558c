"""The pure parts of the Tapis Jobs target: settings, the job request, states, the app."""

from __future__ import annotations

import io
import shlex
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from hpcserve_jupyter.errors import BadInput, RecipeError
from hpcserve_jupyter.resolve import resolve
from hpcserve_jupyter.targets import target_class
from hpcserve_jupyter.targets.base import LaunchRequest, Phase
from hpcserve_jupyter.targets.tapis_jobs import app, request, states
from hpcserve_jupyter.targets.tapis_jobs.config import TapisJobsConfig

BASE = {"base_url": "https://tacc.tapis.io", "system_id": "frontera", "username": "jdoe"}


def settings(**kw) -> TapisJobsConfig:
    return TapisJobsConfig.model_validate({**BASE, **kw})


def launch_request(argv=None, **spec_changes) -> LaunchRequest:
    spec = resolve("smollm2-135m", "llama-cpp")
    if argv is not None:
        spec_changes["argv"] = tuple(argv)
    spec = replace(spec, **spec_changes)
    return LaunchRequest(session_id="ab12cd34", name="my model", spec=spec, workdir=Path("."),
                         secrets={"api_key": "sk-secret-value"})


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(("key", "value"), [
    ("system_id", "front era"), ("system_id", "-x"), ("queue", "rtx;rm -rf /"),
    ("allocation", "ABC 123"), ("allocation", "$(id)"), ("app_id", "a/b"),
    ("scheduler_options", ["--qos=normal\n#SBATCH --x"]), ("scheduler_options", ["qos"]),
    ("storage_dir", "relative/dir"), ("storage_dir", "/a/../b"), ("storage_dir", "/a b"),
    ("env", {"_tapisJobUUID": "x"}), ("tunnel", "telnet"),
    ("scheduler_options", ["--partition=gpu"]), ("scheduler_options", ["-A", "x"]),
    ("python", "/opt/$(id)/python"), ("bind_host", "0.0.0.0;id"),
    ("runtime", "DOCKER"), ("container_binds", ["scratch"]), ("container_binds", ["/a,/b"]),
    ("container_binds", ["/a:/b:rx"]),
])
def test_bad_values_are_refused_when_read(key, value):
    with pytest.raises(RecipeError) as err:
        target_class("tapis-jobs")("hpc", {**BASE, "kind": "tapis-jobs", key: value})
    assert key.split("_")[0] in str(err.value).lower() or "hpc" in str(err.value)


def test_secrets_do_not_belong_in_the_file():
    with pytest.raises(RecipeError) as err:
        target_class("tapis-jobs")("hpc", {**BASE, "password": "hunter2"})
    assert "hunter2" not in str(err.value)


def test_good_settings():
    s = settings(queue="rtx", allocation="TG-ABC123456", scheduler_options=[
        "--constraint=a100", "--qos normal"], storage_dir="/work2/01234/jdoe/hpcserve/")
    assert s.tenant_id == "tacc" and s.storage_dir == "/work2/01234/jdoe/hpcserve"


# ------------------------------------------------------------------ the job request


def test_request_quotes_every_word_and_keeps_secrets_out():
    hostile = ["engine", "--prompt", "it's $(id) `uname` ; rm -rf ~", "--key",
               "{HPCSERVE_API_KEY}", "--port", "{HPCSERVE_PORT}"]
    s = settings(queue="rtx", allocation="TG-ABC123456", scheduler_options=["--qos=normal"])
    plan = request.plan(launch_request(hostile), s, app_version="0.1.0", hf_token="hf_tok")
    body = plan.body
    args = [a["arg"] for a in body["parameterSet"]["appArgs"]]
    # What Tapis pastes into its script's command line splits back into the argv; the word
    # Tapis would refuse (; ` |...) travels in the env file, its placeholder in its place.
    words = shlex.split(" ".join(args))
    assert words == [*hostile[:2], "{HPCSERVE_ARG_2}", *hostile[3:]]
    assert plan.secret_values["HPCSERVE_ARG_2"] == hostile[2]
    assert not any(request.TAPIS_UNSAFE.search(a) for a in args)
    assert body["execSystemLogicalQueue"] == "rtx"
    opts = [o["arg"] for o in body["parameterSet"]["schedulerOptions"]]
    assert "--account=TG-ABC123456" in opts and "--qos=normal" in opts
    assert body["name"] == "hpcserve-my_model-ab12cd34"
    assert "hpcserve-session-ab12cd34" in body["tags"]
    text = repr(body)
    assert "sk-secret-value" not in text and "hf_tok" not in text
    assert plan.secret_values["HPCSERVE_API_KEY"] == "sk-secret-value"
    assert plan.secret_values["HF_TOKEN"] == "hf_tok"
    assert "sk-secret-value" not in repr(plan)


def test_environment_travels_in_the_env_file_not_the_job_record():
    req = launch_request(env=(("WEIRD", "a$HOME `x` \\ \"q\""), ("AT", "p={HPCSERVE_PORT}")))
    plan = request.plan(req, settings(env={"HF_HOME": "/scratch/hf"}), app_version="1")
    keys = {e["key"]: e["value"] for e in plan.body["parameterSet"]["envVariables"]}
    assert "WEIRD" not in keys and "HF_HOME" not in keys
    assert keys["HPCSERVE_TEMPLATED_ENV"] == "AT"
    assert plan.secret_values["WEIRD"] == "a$HOME `x` \\ \"q\""
    assert plan.secret_values["HF_HOME"] == "/scratch/hf"


@pytest.mark.parametrize("word", ["a;b", "a|b", "a>b", "a<b", "a&b", "a`b", "a\nb", "a\x7fb",
                                  "${JobUUID}", "\x85"])
def test_words_tapis_refuses_or_rewrites_go_by_placeholder(word):
    args, spilled = request.app_args(("x", word))
    assert args[1]["arg"] == "'{HPCSERVE_ARG_1}'" and spilled == {"HPCSERVE_ARG_1": word}
    assert args[0]["arg"] == "x"


def test_singularity_runtime_runs_the_engine_in_the_image():
    s = settings(runtime="SINGULARITY")
    with pytest.raises(BadInput, match="needs an image"):
        request.plan(launch_request(image=None), s, app_version="1")
    plan = request.plan(launch_request(image="docker://ghcr.io/x/y:1"), s, app_version="1")
    assert plan.secret_values["HPCSERVE_CONTAINER_IMAGE"] == "docker://ghcr.io/x/y:1"
    assert plan.secret_values["HPCSERVE_CONTAINER"] == "singularity"
    assert "docker://" not in repr(plan.body)  # the app stays ZIP: its script runs the image
    mine = request.plan(launch_request(), settings(runtime="SINGULARITY", image="/i/v.sif",
                                                   container_command="apptainer"), app_version="1")
    assert mine.secret_values["HPCSERVE_CONTAINER_IMAGE"] == "/i/v.sif"
    assert mine.secret_values["HPCSERVE_CONTAINER"] == "apptainer"


def test_request_resources_default_to_the_recipe():
    req = launch_request()
    body = request.plan(req, settings(), app_version="1").body
    assert body["coresPerNode"] == req.spec.cpus and body["memoryMB"] == req.spec.memory_mb
    assert body["maxMinutes"] == -(-req.spec.time_s // 60)
    over = request.plan(req, settings(max_minutes=7, cores_per_node=3), app_version="1").body
    assert (over["maxMinutes"], over["coresPerNode"]) == (7, 3)


def test_request_refuses_what_it_cannot_run():
    with pytest.raises(BadInput, match="replicas"):
        request.plan(launch_request(replicas=2), settings(), app_version="1")
    with pytest.raises(BadInput, match="NUL"):
        request.plan(launch_request(["a\0b"]), settings(), app_version="1")


def test_secrets_file_is_quoted_shell():
    text = request.secrets_file({"HPCSERVE_API_KEY": "a'b $(c) &d"})
    out = subprocess.run(["bash", "-c", text + 'printf %s "$HPCSERVE_API_KEY"'],
                         capture_output=True, text=True, check=True).stdout
    assert out == "a'b $(c) &d"


# ------------------------------------------------------------------ states


@pytest.mark.parametrize(("status", "phase"), [
    *[(s, Phase.PENDING) for s in states.WAITING + states.HELD],
    ("RUNNING", Phase.RUNNING), ("ARCHIVING", Phase.STOPPING), ("FINISHED", Phase.EXITED),
    ("FAILED", Phase.EXITED), ("CANCELLED", Phase.STOPPED), ("SOMETHING_NEW", Phase.PENDING),
])
def test_status_mapping(status, phase):
    assert states.phase_of(status) == phase


def test_exit_codes_and_timeouts():
    assert states.exit_code_of({"remoteResultInfo": "3:0"}) == 3
    assert states.exit_code_of({"remoteResultInfo": "0:9"}) == 137
    assert states.exit_code_of({"remoteResultInfo": "n/a"}) is None
    assert states.is_timeout({"lastMessage": "The job exceeded its TIMEOUT"})
    assert not states.is_timeout({"lastMessage": "exit code 1"})
    assert states.cancelled_outside({"condition": "SCHEDULER_CANCELLED"})
    assert states.cancelled_outside({"lastMessage": 'ended with remote status "CANCELLED"'})
    assert not states.cancelled_outside({"condition": "CANCELLED_BY_USER"})
    assert states.reason_of({"status": "QUEUED", "lastMessage": "queued"}) == \
        "Tapis job QUEUED: queued"


# ------------------------------------------------------------------ the app


def test_bundle_is_deterministic_and_holds_the_script():
    data = app.bundle()
    assert data == app.bundle()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        info = tar.getmember("tapisjob_app.sh")
        assert info.mode == 0o755
        assert tar.extractfile(info).read() == app.wrapper_text()


def test_app_definition_and_layout():
    s = settings(queue="rtx")
    lay = app.layout(s, {"rootDir": "/", "jobWorkingDir": "/scratch/jdoe"})
    assert lay.storage == "/scratch/jdoe/hpcserve"
    assert lay.files_path("/scratch/jdoe/hpcserve/x") == "scratch/jdoe/hpcserve/x"
    _, digest, body = app.planned(s, lay)
    assert body["runtime"] == "ZIP" and body["jobType"] == "BATCH"
    assert body["containerImage"].startswith("/scratch/jdoe/hpcserve/apps/hpcserve-serve-")
    assert body["notes"]["bundleSha256"] == digest
    assert body["jobAttributes"]["execSystemLogicalQueue"] == "rtx"
    with pytest.raises(BadInput, match="storage_dir"):
        app.layout(s, {"rootDir": "/", "jobWorkingDir": "HOST_EVAL($SCRATCH)"})
    under = app.layout(settings(storage_dir="/home/jdoe/h"), {"rootDir": "/home/jdoe"})
    assert under.files_path("/home/jdoe/h/apps") == "h/apps"
    with pytest.raises(BadInput, match="outside"):
        under.files_path("/etc/passwd")


def test_time_left_from_max_minutes_and_remote_started():
    from hpcserve_jupyter.targets.tapis_jobs import states as jstates

    job = {"maxMinutes": 30, "remoteStarted": "1970-01-01T00:16:40.000000Z"}  # t=1000
    assert jstates.time_limit_of(job) == 1800
    assert jstates.time_left_of(job, now=1600.0) == 1200.0
    assert jstates.time_left_of(job, now=9999.0) == 0.0
    assert jstates.time_left_of({"maxMinutes": 30}, now=1600.0) is None  # not started
    assert jstates.time_limit_of({"maxMinutes": None}) is None
    assert jstates.time_left_of({**job, "remoteStarted": "garbage"}, now=1.0) is None
