"""One-off jobs on the Tapis Pods target, end to end: JobManager -> TapisPodsTarget -> real
tapipy -> the stand-in, which runs the pod's command (the job driver around real llama.cpp on
SmolLM2, or the embed-files task) as a local process. The input goes up with
upload_to_volume, progress.json and the output come back with get_volume_contents, and the
pod and its volume are deleted once the output is here (unless keep_volume). Cancel keeps
the partial output and resume uploads it beside the input, so only the rest is asked.

Assertions are on what the code controls (ids, counts, states, files, calls the stand-in
received), never on an answer's wording."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tapis_helpers import TARGET, wait_for

from hpcserve_jupyter.errors import BadInput, HpcserveError
from hpcserve_jupyter.jobs import JobState
from hpcserve_jupyter.spec import JOBDIR, PYTHON, ServeSpec
from hpcserve_jupyter.targets.base import LaunchRequest
from hpcserve_jupyter.targets.tapis import deploy, jobfiles
from hpcserve_jupyter.targets.tapis.config import TapisPodsConfig
from job_inputs import chat_lines as _chat_lines
from job_inputs import write


def chat_lines(n: int, max_tokens: int) -> list[dict]:
    return _chat_lines(n, max_tokens, prefix="c")


pytestmark = [pytest.mark.model, pytest.mark.timeout(400)]
RECIPE = "smollm2-135m"
STAGED = {"hpcserve_jobrun.py", "job.json", "input.jsonl"}


def output_lines(path: str | Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def volume_ids(tapis) -> set[str]:
    """The stand-in's volumes, listed through the Pods API."""
    return {v.volume_id for v in tapis.pods.list_volumes()}


def paths_of(standin, operation: str) -> list[str]:
    prefix = "/v3/pods/volumes/"
    return [c.path[len(prefix):].split("/", 2)[2] for c in standin.calls_to(operation)
            if c.status == 200]


@pytest.fixture
def jobs_hp(make_hp) -> Iterator:
    """`jobs_hp(**config)`: an embedded manager with the pods target; live jobs are cancelled
    at the end, so no pod outlives a failed test."""
    made = []

    def make(**overrides):
        hp = make_hp(**overrides)
        made.append(hp)
        return hp

    yield make
    for hp in made:
        with contextlib.suppress(HpcserveError, RuntimeError):
            for job in hp.jobs(live_only=True):
                hp.cancel_job(job.id)


# --------------------------------------------------------------------------- batch


def test_batch_job_on_pods_end_to_end(jobs_hp, standin, tapis, tmp_path):
    hp = jobs_hp()
    job = hp.submit_job(RECIPE, write(tmp_path / "in.jsonl", chat_lines(6, max_tokens=6)),
                        on=TARGET, concurrency=2, output=tmp_path / "out.jsonl")
    assert job.state == JobState.PENDING and job.total == 6
    handle = job.handle
    pod_id, vol_id = handle["pod_id"], handle["job_volume_id"]
    assert vol_id == handle["volume_id"] and handle["keep_volume"] is False
    # the staged files went up with upload_to_volume, into job/ of the pod's own volume
    assert sorted(paths_of(standin, "upload_to_volume")) == sorted(f"job/{n}" for n in STAGED)
    seen: list[tuple[str, int]] = []
    final = job.wait(timeout=300, progress=lambda j: seen.append((str(j.state), j.done)))
    assert final.state == JobState.DONE, (final.reason, final.log_tail)
    assert (final.done, final.failed) == (6, 0)
    states = [s for s, _ in seen]
    assert "running" in states and states[-1] == "done"
    assert [d for _, d in seen] == sorted(d for _, d in seen)  # progress only moves forward
    # progress came from the job's volume, one small read per tick
    assert "job/progress.json" in paths_of(standin, "get_volume_contents")
    out = output_lines(final.output)
    assert sorted(x["custom_id"] for x in out) == [f"c{i}" for i in range(6)]
    assert all(x["error"] is None and x["response"]["status_code"] == 200 for x in out)
    assert all(x["response"]["body"]["usage"]["completion_tokens"] <= 6 for x in out)
    assert stat.S_IMODE(os.stat(final.output).st_mode) == 0o600
    frame = job.results()
    assert sorted(frame["custom_id"]) == [f"c{i}" for i in range(6)]
    # what ran in the pod: the driver from the volume's job/ directory, the key in the
    # environment only
    assert pod_id not in standin.pods  # the pod is deleted once the output is here
    created = [c.body for c in standin.calls_to("create_pod")][-1]
    assert created["command"] == [sys.executable]
    assert created["arguments"][:3] == ["/app/models/job/hpcserve_jobrun.py", "--job",
                                        "/app/models/job/job.json"]
    key = hp.manager.api_key(job.id)
    assert key not in " ".join(created["arguments"])
    assert created["environment_variables"]["HPCSERVE_JOB_KEY"] == key
    assert created["description"].startswith("hpcserve job ")
    assert created["volume_mounts"] == {"/app/models": {"type": "tapisvolume",
                                                        "source_id": vol_id, "sub_path": ""}}
    # the engine answered every line, and the logs outlive the pod
    assert hp.job_logs(job.id, tail=None).count('"POST /v1/chat/completions') == 6
    # pod and volume are gone: nothing is left behind on the service
    assert pod_id not in {p.pod_id for p in tapis.pods.list_pods()}
    assert vol_id not in volume_ids(tapis)
    assert ("delete_volume", 200) in [(c.operation_id, c.status) for c in standin.calls]


def test_keep_volume_keeps_the_job_files(jobs_hp, standin, tapis, tmp_path):
    hp = jobs_hp(keep_volume=True)
    job = hp.submit_job(RECIPE, write(tmp_path / "in.jsonl", chat_lines(2, max_tokens=4)),
                        on=TARGET, concurrency=2)
    final = job.wait(timeout=300)
    assert final.state == JobState.DONE, (final.reason, final.log_tail)
    assert final.handle["keep_volume"] is True
    vol_id = final.handle["job_volume_id"]
    assert final.handle["pod_id"] not in standin.pods  # the pod is deleted all the same
    assert vol_id in volume_ids(tapis)
    kept = tapis.pods.get_volume_contents(volume_id=vol_id, path="job/output.jsonl")
    assert kept == Path(final.output).read_bytes()
    names = {f.name for f in tapis.pods.list_volume_files(volume_id=vol_id)}
    assert names == {"job"}
    tapis.pods.delete_volume(volume_id=vol_id)


def test_cancel_keeps_the_partial_output_and_resume_finishes_it(jobs_hp, standin, tapis, tmp_path):
    hp = jobs_hp()
    job = hp.submit_job(RECIPE, write(tmp_path / "long.jsonl", chat_lines(40, 48)),
                        on=TARGET, concurrency=1)
    wait_for(lambda: hp.job_status(job.id).done >= 2, timeout=300, what="two answers")
    cancelled = hp.cancel_job(job.id)
    assert cancelled.state == JobState.CANCELLED, (cancelled.reason, cancelled.log_tail)
    out = output_lines(cancelled.output)
    assert 2 <= len(out) < 40
    assert len({x["custom_id"] for x in out}) == len(out)
    assert all(x["response"]["status_code"] == 200 for x in out)
    assert cancelled.done == len(out)  # the driver's last progress matches what came back
    # the driver saw SIGTERM and said so before the pod went away
    assert "cancelled" in hp.job_logs(job.id, tail=None)
    ops = [c.operation_id for c in standin.calls]
    # the output was fetched while the volume still existed; later reads (a monitor tick
    # that raced the cancel) found nothing and left the local copy alone
    deleted = ops.index("delete_volume")
    fetches = [(i, c.status) for i, c in enumerate(standin.calls)
               if c.operation_id == "get_volume_contents" and c.path.endswith("output.jsonl")]
    assert any(status == 200 and i < deleted for i, status in fetches)
    assert all(status == 404 for i, status in fetches if i > deleted)
    assert not standin.pods and job.handle["job_volume_id"] not in volume_ids(tapis)

    # resume: the partial output goes up beside the input and only the rest is asked
    again = hp.submit_job(RECIPE, tmp_path / "long.jsonl", on=TARGET, concurrency=4,
                          resume=job.id)
    assert "job/output.jsonl" in paths_of(standin, "upload_to_volume")
    final = again.wait(timeout=300)
    assert final.state == JobState.DONE, (final.reason, final.log_tail)
    assert (final.done, final.resumed) == (40, len(out))
    merged = output_lines(final.output)
    assert sorted(x["custom_id"] for x in merged) == sorted(f"c{i}" for i in range(40))
    asked = hp.job_logs(again.id, tail=None).count('"POST /v1/chat/completions')
    assert asked == 40 - len(out)
    assert not standin.pods and not volume_ids(tapis)


# --------------------------------------------------------------------------- task


def test_task_recipe_on_pods(jobs_hp, standin, tapis, tmp_path):
    source = tmp_path / "docs"
    source.mkdir()
    for i in range(3):
        (source / f"f{i}.txt").write_text(f"document number {i} " * (i + 1))
    hp = jobs_hp()
    job = hp.submit_job("embed-files", source, on=TARGET, output=tmp_path / "vectors")
    assert sorted(paths_of(standin, "upload_to_volume")) == \
        ["job/hpcserve_jobrun.py", "job/input.zip", "job/job.json"]
    final = job.wait(timeout=300)
    assert final.state == JobState.DONE, (final.reason, final.log_tail)
    assert (final.done, final.total) == (3, 3)
    files = sorted(p.name for p in (tmp_path / "vectors").iterdir())
    assert files == ["f0.txt.json", "f1.txt.json", "f2.txt.json"]
    for name in files:
        data = json.loads((tmp_path / "vectors" / name).read_text())
        assert len(data["embedding"]) == 576 and data["file"] == name[:-5]
    assert "job/output.zip" in paths_of(standin, "get_volume_contents")
    assert not standin.pods and final.handle["job_volume_id"] not in volume_ids(tapis)


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(("status", "error"), [(500, "LaunchError"), (400, "BadInput")])
def test_failed_upload_leaves_nothing_behind(jobs_hp, standin, tapis, tmp_path, status, error):
    hp = jobs_hp(monitor=False)
    standin.fail_next("upload_to_volume", status=status)
    with pytest.raises(HpcserveError) as err:
        hp.submit_job(RECIPE, write(tmp_path / "in.jsonl", chat_lines(2, 4)), on=TARGET)
    assert type(err.value).__name__ == error
    assert "upload" in str(err.value)
    (job,) = hp.jobs()
    assert job.state == JobState.FAILED
    assert not standin.calls_to("create_pod")  # nothing ran
    assert not volume_ids(tapis) and not standin.pods  # the volume made for it is deleted


# --------------------------------------------------------------------------- pure parts


def job_request(files: dict[str, Path], sid: str = "a1b2c3d4") -> LaunchRequest:
    spec = ServeSpec(
        recipe="r", backend="llama-cpp", category="inference", model=None,
        served_model_name="m", argv=(PYTHON, f"{JOBDIR}/hpcserve_jobrun.py", "--job",
                                     f"{JOBDIR}/job.json"),
        env=(("WHERE", f"{JOBDIR}/x"),), secret_env=(), health_path="/health",
        api_flavour="openai", nodes=1, gpus=0, gpu_class=None, cpus=1, memory_mb=1024,
        time_s=600, replicas=1, gpus_per_replica=0, tensor_parallel=1, base_port=None,
        image=None, idle_timeout_s=None, max_lifetime_s=None)
    return LaunchRequest(session_id=sid, name="job-1", spec=spec, workdir=Path("/nonexistent"),
                         files=files)


def pods_cfg(**kw) -> TapisPodsConfig:
    return TapisPodsConfig.model_validate({"base_url": "https://tacc.tapis.io", **kw})


def test_plan_of_a_job_in_its_own_volume():
    plan = deploy.plan(job_request({"job.json": Path("/x")}), pods_cfg())
    assert plan.job_volume == plan.ids.volume and plan.job_volume_body is None
    assert plan.job_dir == "/app/models/job"
    assert plan.pod["arguments"] == ["/app/models/job/hpcserve_jobrun.py", "--job",
                                     "/app/models/job/job.json"]
    assert plan.pod["environment_variables"]["WHERE"] == "/app/models/job/x"
    session = deploy.plan(job_request({}), pods_cfg())  # no files: a session, as before
    assert (session.job_volume, session.job_dir) == ("", "")
    assert session.pod["description"].startswith("hpcserve session ")


@pytest.mark.parametrize("shape", ["live", "spec"])
def test_plan_of_a_job_beside_a_shared_volume(shape):
    plan = deploy.plan(job_request({"job.json": Path("/x")}),
                       pods_cfg(volume_id="sharedmodels", volume_mounts_shape=shape))
    assert plan.ids.volume == "sharedmodels" and not plan.volume_owned
    assert plan.job_volume == plan.ids.deployment + "vol"
    assert plan.job_volume_body is not None
    assert plan.job_volume_body["volume_id"] == plan.job_volume
    assert plan.job_dir == f"{deploy.JOB_MOUNT}/job"
    mounts = plan.pod["volume_mounts"]
    if shape == "live":
        assert mounts[deploy.JOB_MOUNT]["source_id"] == plan.job_volume
        assert mounts["/app/models"]["source_id"] == "sharedmodels"
    else:
        assert mounts[plan.job_volume]["mount_path"] == deploy.JOB_MOUNT
        assert mounts["sharedmodels"]["mount_path"] == "/app/models"
    own = plan.ids.deployment + "vol"
    with pytest.raises(BadInput, match="shared volume_id"):
        deploy.plan(job_request({"job.json": Path("/x")}), pods_cfg(volume_id=own))


def test_job_file_names_stay_inside_the_job_directory(tmp_path):
    assert jobfiles.volume_path("progress.json") == "job/progress.json"
    for bad in ("../x", "a/b", "", ".."):
        with pytest.raises(BadInput):
            jobfiles.volume_path(bad)
    folder = tmp_path / "in"
    folder.mkdir()
    (tmp_path / "secret.txt").write_text("s")
    (folder / "link.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(BadInput, match="links outside"):
        jobfiles.stage(None, "vol", {"in": folder})  # type: ignore[arg-type]
