"""End to end through the REAL tapipy client: Apps, Files and Jobs of the stand-in running ZIP
jobs on the real SLURM test cluster over the real sshd.

Assertions are on state (statuses, conditions, exit codes), on files (what the app received,
what Tapis wrote) and on calls (squeue batching); never on durations.  Every SLURM job a test
starts is scancel'ed when the stand-in stops (the ``jobs_standin`` fixture), even on failure.

What these tests pin down for a client of Tapis Jobs:

* appArgs reach the program exactly as the shell parses the ``arg`` text: Tapis does not quote
  them, so the CLIENT quotes (``'hello world'`` arrives as one argument).  An unquoted
  ``$(...)`` in an arg IS run by the job's shell: that is the client's problem to avoid.
  ``; & | < > ``` make submitJob answer 400.
* cancelJob on an ended job answers 409, not 200.
* A failing app ends FAILED with condition SCHEDULER_TERMINATED, ``remoteResultInfo``
  ``<exit>:<signal>`` and a ``lastMessage`` naming the SLURM job, state and exit code.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import zipfile

import pytest
from tapipy import errors

from .server import StandIn
from .zip_app import app_archive, result_lines, wait_status

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]
SYSTEM = "testcluster"
FULL_PATH = ["PENDING", "PROCESSING_INPUTS", "STAGING_INPUTS", "STAGING_JOB", "SUBMITTING_JOB",
             "QUEUED", "RUNNING", "ARCHIVING"]


def working_dir(standin: StandIn) -> str:
    return standin.apps.hosts[SYSTEM].working_dir()


@pytest.fixture
def echo_app(jobs_standin: StandIn, jtapis) -> str:
    """The zip_app bundle uploaded with files.insert and registered as app echo 1.0."""
    rel = working_dir(jobs_standin).lstrip("/") + "/apps/echo.tgz"
    jtapis.files.insert(systemId=SYSTEM, path=rel, file=("echo.tgz", io.BytesIO(app_archive())))
    jtapis.apps.createAppVersion(
        id="echo", version="1.0", runtime="ZIP", jobType="BATCH", containerImage="/" + rel,
        jobAttributes={"execSystemId": SYSTEM, "maxMinutes": 5,
                       "parameterSet": {"envVariables": [{"key": "APP_SLEEP", "value": "0"}]}})
    return "echo"


def submit(tapis, name: str = "echo-job", args: list[str] = (), env: dict[str, str] | None = None,
           **kw):
    ps = {"appArgs": [{"arg": a} for a in args],
          "envVariables": [{"key": k, "value": v} for k, v in (env or {}).items()]}
    ps.update(kw.pop("parameterSet", {}))
    return tapis.jobs.submitJob(name=name, appId="echo", appVersion="1.0", parameterSet=ps, **kw)


def download(tapis, job_uuid: str, path: str, **kw) -> bytes:
    data = tapis.jobs.getJobOutputDownload(jobUuid=job_uuid, outputPath=path, **kw)
    assert isinstance(data, bytes), data
    return data


def squeue_state(cluster_env: dict[str, str], slurm_id: str) -> str:
    """The job's state as SLURM reports it ('' when squeue no longer lists it)."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", slurm_id, "-o", "%T"],
                         capture_output=True, text=True, check=False).stdout
    return out.strip()


# ------------------------------------------------------------------------- the happy path


def test_zip_job_runs_through_slurm_and_its_output_downloads(jobs_standin: StandIn, jtapis,
                                                             echo_app, cluster_env):
    job = submit(jtapis, args=["'hello world'", '"it'"'"'s \\"quoted\\""', "plain"],
                 env={"GREETING": "hi there; $HOME"},
                 parameterSet={"schedulerOptions": [{"arg": "--comment standin-test"}]},
                 tags=["standin", "e2e"])
    assert job.status == "PENDING" and job.uuid.endswith("-007")
    assert job.execSystemExecDir == f"{working_dir(jobs_standin)}/jobs/{job.uuid}"
    assert job.execSystemOutputDir == job.execSystemExecDir + "/output"
    assert job.archiveSystemDir == job.execSystemOutputDir  # same system: archive in place
    wait_status(jtapis, job.uuid, {"FINISHED", "FAILED", "CANCELLED"})

    final = jtapis.jobs.getJob(jobUuid=job.uuid)
    assert (final.status, final.condition) == ("FINISHED", "NORMAL_COMPLETION")
    assert final.remoteOutcome == "FINISHED" and final.remoteResultInfo == "0:0"
    assert final.remoteJobId.isdigit() and final.remoteQueue == cluster_env[
        "HPCSERVE_TEST_SLURM_PARTITION"]
    assert final.remoteStarted and final.ended and final.tags == ["standin", "e2e"]
    history = [h.eventDetail for h in jtapis.jobs.getJobHistory(jobUuid=job.uuid)]
    assert history == [*FULL_PATH, "FINISHED"]
    param_set = json.loads(final.parameterSet)  # a JSON string in the Job model
    assert param_set["envVariables"][0]["key"].startswith("_tapis")

    lines = result_lines(download(jtapis, job.uuid, "result.txt"))
    assert lines[:4] == ["argc=3", "arg=[hello world]", 'arg=[it\'s "quoted"]', "arg=[plain]"]
    # env values are double-quoted by Tapis only because of the space/';': $HOME is expanded
    home = working_dir(jobs_standin).rsplit("/", 2)[0]
    assert f"GREETING=[hi there; {home}]" in lines
    assert f"JOBUUID=[{job.uuid}]" in lines and "NODES=[1]" in lines
    assert f"PWD=[{job.execSystemExecDir}]" in lines
    out = download(jtapis, job.uuid, "tapisjob.out").decode()
    assert out.splitlines() == ["app started", "app stderr line", "app ends with 0"]

    script = download(jtapis, job.uuid, "tapisjob.sh").decode()
    assert "#SBATCH --comment standin-test\n" in script
    assert f"#SBATCH --partition {cluster_env['HPCSERVE_TEST_SLURM_PARTITION']}\n" in script
    assert "#SBATCH --time 5\n" in script and "#SBATCH --ntasks 1\n" in script
    assert f"#SBATCH --output {job.execSystemOutputDir}/tapisjob.out\n" in script
    assert ("./'tapisjob_app.sh' 'hello world' \"it's \\\"quoted\\\"\" plain > "
            f"'{job.execSystemOutputDir}/tapisjob.out' 2>&1\n") in script
    env_text = download(jtapis, job.uuid, "tapisjob.env").decode()
    assert 'export GREETING="hi there; $HOME"\n' in env_text
    assert f"export _tapisJobUUID={job.uuid}\n" in env_text

    listed = {f.name for f in jtapis.jobs.getJobOutputList(jobUuid=job.uuid, outputPath="/")}
    assert listed == {"result.txt", "tapisjob.out", "tapisjob.sh", "tapisjob.env"}
    packed = download(jtapis, job.uuid, "/")
    assert sorted(zipfile.ZipFile(io.BytesIO(packed)).namelist()) == sorted(listed)
    with pytest.raises(errors.BaseTapyException) as err:  # 409: not idempotent
        jtapis.jobs.cancelJob(jobUuid=job.uuid)
    assert err.value.response.status_code == 409
    assert "JOBS_JOB_IN_TERMINAL_STATE" in str(err.value)


def test_unquoted_command_substitution_is_run_by_the_jobs_shell(jobs_standin: StandIn,
                                                                jtapis, echo_app):
    """Tapis pastes appArgs as they are: `$(...)` is expanded on the cluster.  Quoting is the
    client's job ('$(...)' in single quotes arrives literally)."""
    job = submit(jtapis, args=["$(echo injected)", "'$(echo literal)'"])
    wait_status(jtapis, job.uuid, {"FINISHED", "FAILED"})
    lines = result_lines(download(jtapis, job.uuid, "result.txt"))
    assert lines[:3] == ["argc=2", "arg=[injected]", "arg=[$(echo literal)]"]


@pytest.mark.parametrize("arg", ["a;b", "x && y", "a|b", "`id`", "> f"])
def test_dangerous_app_args_are_refused_before_any_job(jobs_standin: StandIn, jtapis, echo_app,
                                                       arg):
    with pytest.raises(errors.BadRequestError) as err:
        submit(jtapis, args=[arg])
    assert "JOBS_INVALID_INPUT_CHARACTERS" in str(err.value)
    assert jobs_standin.jobs.jobs == {}


def test_zip_image_given_as_tapis_url_is_staged_and_removed(jobs_standin: StandIn, jtapis,
                                                           echo_app):
    rel = working_dir(jobs_standin).lstrip("/") + "/apps/echo.tgz"
    jtapis.apps.createAppVersion(id="echo", version="2.0", runtime="ZIP", jobType="BATCH",
                                 containerImage=f"tapis://{SYSTEM}/{rel}",
                                 jobAttributes={"execSystemId": SYSTEM})
    job = jtapis.jobs.submitJob(name="url-image", appId="echo", appVersion="2.0")
    wait_status(jtapis, job.uuid, {"FINISHED", "FAILED"})
    assert jtapis.jobs.getJob(jobUuid=job.uuid).status == "FINISHED"
    exec_rel = job.execSystemExecDir.lstrip("/")
    names = {f.name for f in jtapis.files.listFiles(systemId=SYSTEM, path=exec_rel)}
    assert "tapisjob_app.sh" in names and "echo.tgz" not in names  # removed after the job


# ------------------------------------------------------------------------- failures


def test_failing_app_ends_failed_with_message_and_exit_code(jobs_standin: StandIn, jtapis,
                                                            echo_app):
    job = submit(jtapis, name="fails", env={"APP_EXIT": "3"})
    wait_status(jtapis, job.uuid, {"FINISHED", "FAILED", "CANCELLED"})
    final = jtapis.jobs.getJob(jobUuid=job.uuid)
    assert (final.status, final.condition) == ("FAILED", "SCHEDULER_TERMINATED")
    assert final.remoteOutcome == "FAILED" and final.remoteResultInfo == "3:0"
    assert final.lastMessage == (
        f"JOBS_USER_APP_FAILURE The user application ({final.remoteJobId}) ended with remote "
        'status "FAILED" and returned exit code: 3:0.')
    history = [h.eventDetail for h in jtapis.jobs.getJobHistory(jobUuid=job.uuid)]
    assert history == [*FULL_PATH, "FAILED"]
    # archived anyway (archiveOnAppError defaults to true): the output tail is readable
    assert download(jtapis, job.uuid, "tapisjob.out").decode().splitlines()[-1] == \
        "app ends with 3"


def test_bad_scheduler_option_fails_the_job_in_staging(jobs_standin: StandIn, jtapis,
                                                       echo_app):
    job = submit(jtapis, parameterSet={"schedulerOptions": [{"arg": "-p other"}]})
    wait_status(jtapis, job.uuid, {"FAILED", "FINISHED"})
    final = jtapis.jobs.getJob(jobUuid=job.uuid)
    assert final.condition == "JOB_UNABLE_TO_STAGE_JOB" and final.remoteJobId is None
    assert "JOBS_SCHEDULER_SUBSUMED_ARG" in final.lastMessage
    assert "execSystemLogicalQueue" in final.lastMessage


def test_forced_failure_fault_tool(jobs_standin: StandIn, jtapis, echo_app, cluster_env):
    job = submit(jtapis, env={"APP_SLEEP": "120"})
    wait_status(jtapis, job.uuid, {"RUNNING"})
    jobs_standin.jobs.fail_job(job.uuid, "injected: node lost")
    final = jtapis.jobs.getJob(jobUuid=job.uuid)
    assert (final.status, final.lastMessage) == ("FAILED", "injected: node lost")
    assert squeue_state(cluster_env, final.remoteJobId) in ("", "CANCELLED", "COMPLETING")


# ------------------------------------------------------------------------- cancel


def test_cancel_running_job_and_running_output(jobs_standin: StandIn, jtapis, echo_app,
                                               cluster_env):
    job = submit(jtapis, env={"APP_SLEEP": "300"})
    seen = wait_status(jtapis, job.uuid, {"RUNNING"})
    assert seen[-1] == "RUNNING"
    slurm_id = jtapis.jobs.getJob(jobUuid=job.uuid).remoteJobId
    assert squeue_state(cluster_env, slurm_id) == "RUNNING"
    with pytest.raises(errors.BadRequestError) as err:  # not terminal, allowIfRunning unset
        download(jtapis, job.uuid, "result.txt")
    assert "JOBS_JOB_NOT_TERMINATED" in str(err.value)
    running = result_lines(download(jtapis, job.uuid, "result.txt", allowIfRunning=True))
    assert running[0] == "argc=0"

    accepted = jtapis.jobs.cancelJob(jobUuid=job.uuid)
    assert "JOBS_JOB_CANCEL_ACCEPTED" in accepted.message
    wait_status(jtapis, job.uuid, {"CANCELLED", "FAILED", "FINISHED"})
    final = jtapis.jobs.getJob(jobUuid=job.uuid)
    assert (final.status, final.condition) == ("CANCELLED", "CANCELLED_BY_USER")
    assert squeue_state(cluster_env, slurm_id) in ("", "CANCELLED")
    # a cancelled job's output is read from the exec system's output dir
    assert download(jtapis, job.uuid, "tapisjob.out").startswith(b"app started")


def test_job_cancelled_in_slurm_outside_tapis_ends_failed(jobs_standin: StandIn, jtapis,
                                                         echo_app):
    job = submit(jtapis, env={"APP_SLEEP": "300"})
    wait_status(jtapis, job.uuid, {"RUNNING"})
    jobs_standin.jobs.scancel_behind_back(job.uuid)
    wait_status(jtapis, job.uuid, {"FAILED", "CANCELLED", "FINISHED"})
    final = jtapis.jobs.getJob(jobUuid=job.uuid)
    assert (final.status, final.condition) == ("FAILED", "SCHEDULER_CANCELLED")
    assert 'remote status "CANCELLED"' in final.lastMessage


# ------------------------------------------------------------------------- list/search/poll


def test_search_list_and_batched_polling(jobs_standin: StandIn, jtapis, echo_app):
    a = submit(jtapis, name="search-a", env={"APP_SLEEP": "5"}, tags=["alpha"])
    b = submit(jtapis, name="search-b", env={"APP_SLEEP": "5"}, tags=["beta"])
    wait_status(jtapis, a.uuid, {"FINISHED", "FAILED"})
    wait_status(jtapis, b.uuid, {"FINISHED", "FAILED"})
    q = jtapis.jobs.getJobSearchList
    both = q(_tapis_query_parameters={"uuid.in": f"{a.uuid},{b.uuid}"})
    assert sorted(j.uuid for j in both) == sorted([a.uuid, b.uuid])
    assert set(vars(both[0])) == {"uuid", "name", "owner", "appId", "created", "status",
                                  "condition", "remoteStarted", "ended", "tenant",
                                  "execSystemId", "archiveSystemId", "appVersion",
                                  "lastUpdated"}
    assert [j.uuid for j in q(_tapis_query_parameters={"name.eq": "search-b"})] == [b.uuid]
    assert [j.uuid for j in q(_tapis_query_parameters={"name.like": "search-*",
                                                        "tags.in": "alpha"})] == [a.uuid]
    assert q(_tapis_query_parameters={"name.neq": "search-a", "uuid.eq": a.uuid}) == []
    full = q(select="allAttributes", _tapis_query_parameters={"uuid.eq": b.uuid})
    assert full[0].remoteJobId == jtapis.jobs.getJob(jobUuid=b.uuid).remoteJobId
    picked = q(select="name,status", orderBy="name(desc)",
               _tapis_query_parameters={"status.eq": "FINISHED"})
    assert [(j.uuid, j.name) for j in picked] == [(b.uuid, "search-b"), (a.uuid, "search-a")]
    listed = jtapis.jobs.getJobList(orderBy="name(asc)")
    assert [j.uuid for j in listed] == [a.uuid, b.uuid]
    with pytest.raises(errors.BadRequestError):
        q(_tapis_query_parameters={"nosuchattr.eq": "x"})
    # one squeue call per poll covered both jobs while they were watched together
    polls = [c for c in jobs_standin.apps.hosts[SYSTEM].commands if c.startswith("squeue")]
    ids = {jtapis.jobs.getJob(jobUuid=u).remoteJobId for u in (a.uuid, b.uuid)}
    assert any(f"-j {min(ids)},{max(ids)} " in c or f"-j {max(ids)},{min(ids)} " in c
               for c in polls)
    assert jobs_standin.jobs.squeue_calls == len(polls)


# ------------------------------------------------------------------------- validation


def test_submit_validation(jobs_standin: StandIn, jtapis, echo_app):
    def refused(exc, text, **kw):
        with pytest.raises(exc) as err:
            jtapis.jobs.submitJob(name="bad", appId=kw.pop("appId", "echo"),
                                  appVersion=kw.pop("appVersion", "1.0"), **kw)
        assert text in str(err.value)

    refused(errors.NotFoundError, "TAPIS_APPCLIENT_NOT_FOUND", appId="nosuchapp")
    refused(errors.BadRequestError, "JOBS_INVALID_LOGICAL_QUEUE",
            execSystemLogicalQueue="nosuchqueue")
    refused(errors.BadRequestError, "JOBS_Q_EXCEEDED_MAX_MINUTES", maxMinutes=11)
    refused(errors.BadRequestError, "JOBS_Q_EXCEEDED_MAX_NODES", nodeCount=2)
    refused(errors.BadRequestError, "JOBS_RESERVED_ENV_VAR",
            parameterSet={"envVariables": [{"key": "_tapisX", "value": "1"}]})
    refused(errors.BadRequestError, "JOBS_INVALID_ENV_VAR_CHAR",
            parameterSet={"envVariables": [{"key": "A-B", "value": "1"}]})
    refused(errors.NotFoundError, "JOBS_INPUT_SYSTEM_NOT_FOUND",
            fileInputs=[{"sourceUrl": "tapis://nosys/x", "targetPath": "x"}])
    assert jobs_standin.jobs.jobs == {}
    with pytest.raises(errors.NotFoundError):
        jtapis.jobs.getJob(jobUuid="no-such-job")


def test_file_input_is_staged_into_the_input_dir(jobs_standin: StandIn, jtapis, echo_app):
    rel = working_dir(jobs_standin).lstrip("/") + "/data/input.txt"
    jtapis.files.insert(systemId=SYSTEM, path=rel, file=("input.txt", io.BytesIO(b"42\n")))
    job = submit(jtapis, fileInputs=[{"name": "data", "sourceUrl": f"tapis://{SYSTEM}/{rel}",
                                      "targetPath": "in/data.txt", "envKey": "DATA"}])
    wait_status(jtapis, job.uuid, {"FINISHED", "FAILED"})
    staged = jtapis.files.getContents(systemId=SYSTEM,
                                      path=job.execSystemInputDir.lstrip("/") + "/in/data.txt")
    assert staged == b"42\n"
    missing = submit(jtapis, fileInputs=[{"sourceUrl": f"tapis://{SYSTEM}/{rel}.none"}])
    wait_status(jtapis, missing.uuid, {"FINISHED", "FAILED"})
    assert jtapis.jobs.getJob(jobUuid=missing.uuid).condition == "JOB_UNABLE_TO_STAGE_INPUTS"


# ------------------------------------------------------------------------- faults


def test_submit_answered_500_leaves_nothing_behind(jobs_standin: StandIn, jtapis, echo_app):
    jobs_standin.fail_next("submitJob", status=500)
    with pytest.raises(errors.InternalServerError):
        submit(jtapis)
    assert jobs_standin.jobs.jobs == {}
    assert not [c for c in jobs_standin.apps.hosts[SYSTEM].commands if "sbatch" in c]
    assert jobs_standin.calls_per_operation()["submitJob"] == 1


def test_api_down_is_unreachable_not_failed(jobs_standin: StandIn, jtapis):
    jobs_standin.set_down()
    with pytest.raises(errors.BaseTapyException) as err:
        jtapis.jobs.getJobList()
    assert err.value.response is None  # no HTTP answer at all
    jobs_standin.set_down(False)
    assert jtapis.jobs.getJobList() == []


# ------------------------------------------------------------------------- files


def test_file_upload_download_round_trip(jobs_standin: StandIn, jtapis, cluster_env):
    base = working_dir(jobs_standin).lstrip("/") + "/files"
    blob = bytes(range(256)) * 300 + b"\r\n--boundary-like\r\n"
    jtapis.files.insert(systemId=SYSTEM, path=f"{base}/a b/c.bin",
                        file=("c.bin", io.BytesIO(blob)))
    assert jtapis.files.getContents(systemId=SYSTEM, path=f"{base}/a b/c.bin") == blob
    part = jtapis.files.getContents(systemId=SYSTEM, path=f"{base}/a b/c.bin",
                                    _tapis_headers={"range": "0,9"})
    assert part == blob[:10]
    [info] = jtapis.files.listFiles(systemId=SYSTEM, path=f"{base}/a b/c.bin")
    assert (info.name, info.type, info.size) == ("c.bin", "file", len(blob))
    # the file really is on the cluster, owned by the system's effective user
    home_file = "/" + f"{base}/a b/c.bin"
    owner = subprocess.run(["stat", "-c", "%U", home_file], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert owner == cluster_env["HPCSERVE_TEST_SSH_USER"]
    jtapis.files.mkdir(systemId=SYSTEM, path=f"{base}/sub/dir")
    names = {f.name: f.type for f in jtapis.files.listFiles(systemId=SYSTEM, path=base)}
    assert names == {"a b": "dir", "sub": "dir"}
    op = jtapis.files.runLinuxNativeOp(systemId=SYSTEM, path=f"{base}/a b/c.bin",
                                       operation="CHMOD", argument="700")
    assert op.exitCode == 0
    st = jtapis.files.getStatInfo(systemId=SYSTEM, path=f"{base}/a b/c.bin")
    assert st.perms == "rwx------" and st.size == len(blob) and st.dir is False
    jtapis.files.delete(systemId=SYSTEM, path=f"{base}/a b")
    with pytest.raises(errors.NotFoundError):
        jtapis.files.getContents(systemId=SYSTEM, path=f"{base}/a b/c.bin")
    with pytest.raises(errors.BadRequestError):
        jtapis.files.getContents(systemId=SYSTEM, path=f"{base}/%2E%2E/%2E%2E/etc/passwd")
    assert os.path.isdir("/" + base + "/sub/dir")


def test_a_connection_sshd_dropped_is_replaced(jobs_standin: StandIn, jtapis):
    """The stand-in shares one SSH connection between its threads; when sshd drops it, the
    next Files call works on a fresh one. (The narrower race, a transport that still looks
    alive when the channel is opened, is what SSHHost._open's second try covers; it cannot be
    provoked on demand, so this checks the replacement, not the race.)"""
    host = jobs_standin.apps.hosts[SYSTEM]
    rel = working_dir(jobs_standin).lstrip("/")
    jtapis.files.mkdir(systemId=SYSTEM, path=rel + "/before")
    first = host._client
    # $PPID of the command is the sshd process serving this connection: killing it drops it
    host.run("kill -9 $PPID", timeout=10)
    jtapis.files.mkdir(systemId=SYSTEM, path=rel + "/after")
    names = {f.name for f in jtapis.files.listFiles(systemId=SYSTEM, path=rel)}
    assert {"before", "after"} <= names
    assert host._client is not first
