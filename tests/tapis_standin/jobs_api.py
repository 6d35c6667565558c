"""Jobs routes of the stand-in, and the worker that runs jobs for real on SLURM over SSH.

Facts followed (Tapis Jobs docs; tapis-jobs 1.7.1 sources: JobQueueProcessor, SlurmMonitor,
SlurmStatusType, AbstractJobMonitor, JobCancelResource, JobOutputDownloadResource,
DataLocator, JobFileManager, ZipStager, ZipLauncher):

* Statuses PENDING -> PROCESSING_INPUTS -> STAGING_INPUTS -> STAGING_JOB -> SUBMITTING_JOB ->
  QUEUED -> RUNNING -> ARCHIVING -> FINISHED | FAILED; CANCELLED on cancelJob.  A job that ends
  while QUEUED still passes through RUNNING.  ``condition`` is set once: NORMAL_COMPLETION,
  CANCELLED_BY_USER, or the first failure condition.
* SLURM states (squeue compact codes): PD queued; R/CG/CF/RS/RF/RH/RQ/SO active and S/RD
  paused -> RUNNING; CD/SE completed -> remoteOutcome FINISHED; BF/F/NF/PR/RV/EQW ->
  SCHEDULER_TERMINATED, CA -> SCHEDULER_CANCELLED (a job scancel'ed outside Tapis), DL ->
  SCHEDULER_DEADLINE, OOM -> SCHEDULER_OUT_OF_MEMORY, TO -> SCHEDULER_TIMEOUT, ST ->
  SCHEDULER_STOPPED; all of them end FAILED with ``lastMessage`` ``JOBS_USER_APP_FAILURE The
  user application (<slurm id>) ended with remote status "<STATE>" and returned exit code:
  <exit>:<signal>.``  Failed jobs are archived when archiveOnAppError is true (the default),
  else remoteOutcome is FAILED_SKIP_ARCHIVE and archiving is skipped.
* ``remoteResultInfo`` is the exit code the way Tapis reads it from ``sacct`` for ended jobs:
  ``<exit>:<signal>`` (e.g. ``0:0``, ``3:0``).
* cancelJob answers 200 ``JOBS_JOB_CANCEL_ACCEPTED`` and cancels asynchronously (scancel, then
  CANCELLED / CANCELLED_BY_USER); on a job in a terminal state it answers **409** with
  ``JOBS_JOB_IN_TERMINAL_STATE`` (the real service is NOT idempotent there).
* getJobOutputList lists recursively unless ``limit`` is given or ``skip`` is non-zero.
* getJobOutputList/Download: a job that is not terminal answers 400 JOBS_JOB_NOT_TERMINATED
  unless ``allowIfRunning=true``; output comes from the archive (archiveSystemId /
  archiveSystemDir) once FINISHED or FAILED-with-archive, else from execSystemOutputDir.  A
  single file downloads as its raw bytes, a directory as a zip, both as
  ``application/octet-stream``; an empty directory answers 200 with a JSON message.
* With the archive dir equal to the output dir (the default on the exec system), archiving only
  copies the launch files tapisjob.sh and tapisjob.env there (includeLaunchFiles, default true);
  otherwise the output dir is copied (excludes first, then includes; globs, or ``REGEX:``).
* getJobSearchList: every query parameter that is not reserved (pretty, select, search,
  orderBy, limit, skip, startAfter, computeTotal, listType) is a condition
  ``<attr>.<op>=<value>`` with op in eq, neq, gt, gte, lt, lte, in, nin (comma lists), like,
  nlike (``*`` any string, ``!`` one character), between, nbetween, contains, ncontains; on
  ``tags`` in/contains test overlap.  ``select``: summaryAttributes (default), allAttributes or
  a comma list (uuid always included).  Default limit 100.
* Unknown job uuid: 404 with message ``TAPIS_NOT_FOUND Job not found: <uuid>``.

Choices of the stand-in:

* One worker thread per job walks the statuses up to QUEUED; ONE monitor thread polls SLURM for
  all QUEUED/RUNNING jobs of a system with a single ``squeue -t all -j <ids>`` per period
  (``job_poll_seconds``); a job missing from squeue for ``missing_polls_limit`` polls ends
  FAILED with JOB_EXECUTION_MONITORING_ERROR.  Exec/input/output directories are created at
  submit time over SSH.
* A bad schedulerOptions entry fails the job in STAGING_JOB (JOB_UNABLE_TO_STAGE_JOB), as in
  the real service, where SlurmOptions is parsed by the worker.
* The stand-in cancels every SLURM job it still tracks when it stops.
* getJobList / getJobSearchList without orderBy return jobs in creation order; listType
  MY_JOBS and ALL_JOBS both mean "the caller's jobs" (no sharing), SHARED_JOBS is empty.
* Job timestamps are set when the stand-in observes the change (poll period precision), as in
  the real service.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import io
import os
import posixpath
import re
import shlex
import stat
import tempfile
import threading
import time
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import ApiError, FileReply, Request, java_envelope, tapis_ts
from .job_request import build_job
from .job_search import RESERVED_QUERY, SUMMARY_FIELDS, matches, page
from .slurm_exec import (
    JOB_ENV_FILE,
    JOB_WRAPPER_SCRIPT,
    JOB_ZIP_SET_EXEC_SCRIPT,
    SET_EXEC_SCRIPT,
    ExecSystem,
    RemoteError,
    SchedulerOptionError,
    SSHHost,
    always_single_quote,
    batch_directives,
    env_file,
    parse_sbatch_output,
    parse_scheduler_options,
    wrapper_script,
)

if TYPE_CHECKING:
    from .server import StandIn

TERMINAL = ("FINISHED", "CANCELLED", "FAILED")
ACTIVE_CODES = {"R", "CG", "CF", "RS", "RF", "RH", "RQ", "SO", "S", "RD"}
COMPLETED_CODES = {"CD", "SE"}
FAILED_CODES = {  # compact code -> (long state, condition)
    "BF": ("BOOT_FAIL", "SCHEDULER_TERMINATED"), "CA": ("CANCELLED", "SCHEDULER_CANCELLED"),
    "DL": ("DEADLINE", "SCHEDULER_DEADLINE"), "F": ("FAILED", "SCHEDULER_TERMINATED"),
    "NF": ("NODE_FAIL", "SCHEDULER_TERMINATED"),
    "OOM": ("OUT_OF_MEMORY", "SCHEDULER_OUT_OF_MEMORY"),
    "TO": ("TIMEOUT", "SCHEDULER_TIMEOUT"), "PR": ("PREEMPTED", "SCHEDULER_TERMINATED"),
    "RV": ("REVOKED", "SCHEDULER_TERMINATED"), "ST": ("STOPPED", "SCHEDULER_STOPPED"),
    "EQW": ("EQW", "SCHEDULER_TERMINATED"),
}


class JobFailure(Exception):
    """Ends the worker: the job becomes FAILED with this condition and message."""

    def __init__(self, condition: str, message: str) -> None:
        super().__init__(message)
        self.condition = condition
        self.message = message


@dataclass
class JobRecord:
    fields: dict[str, Any]
    extras: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    final_message: str | None = None
    missing_polls: int = 0
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def uuid(self) -> str:
        return self.fields["uuid"]

    @property
    def status(self) -> str:
        return self.fields["status"]

    @property
    def statuses(self) -> list[str]:
        return [h["eventDetail"] for h in self.history if h["event"] == "JOB_NEW_STATUS"]

    @property
    def system(self) -> ExecSystem:
        return self.extras["system"]

    @property
    def param_set(self) -> dict[str, Any]:
        return self.extras["param_set"]


class JobsService:
    """The Jobs routes, the per-job workers and the batched SLURM monitor."""

    def __init__(self, standin: StandIn, poll_seconds: float = 1.0,
                 missing_polls_limit: int = 30) -> None:
        self.standin = standin
        self.poll_seconds = poll_seconds
        self.missing_polls_limit = missing_polls_limit
        self.jobs: dict[str, JobRecord] = {}
        self.squeue_calls = 0  # number of batched squeue polls made
        self._next_id = 1
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # ------------------------------------------------------------------ python side

    @property
    def _lock(self) -> threading.RLock:
        return self.standin._lock

    def host(self, job: JobRecord) -> SSHHost:
        return self.standin.apps.hosts[job.system.id]

    def get(self, job_uuid: str) -> JobRecord:
        with self._lock:
            job = self.jobs.get(job_uuid)
        if job is None:
            # the real service answers this 404 with a *success* envelope
            raise ApiError(404, f"TAPIS_NOT_FOUND Job not found: {job_uuid}",
                           result={"name": job_uuid}, envelope_status="success")
        return job

    def fail_job(self, job_uuid: str, message: str,
                 condition: str = "JOB_EXECUTION_MONITORING_ERROR") -> None:
        """Fault tool: end a job FAILED with ``message`` (its SLURM job is cancelled)."""
        job = self.get(job_uuid)
        remote = job.fields["remoteJobId"]
        with self._lock:
            if job.status in TERMINAL:
                return
            self._end(job, "FAILED", condition, message)
        if remote:
            with contextlib.suppress(RemoteError):
                self.host(job).run(f"scancel {remote}")

    def scancel_behind_back(self, job_uuid: str) -> None:
        """Fault tool: ``scancel`` the job's SLURM job without telling the stand-in."""
        job = self.get(job_uuid)
        if job.fields["remoteJobId"]:
            self.host(job).check(f"scancel {job.fields['remoteJobId']}")

    def wait_for(self, job_uuid: str, statuses: set[str], timeout: float = 120.0) -> str:
        """Test helper: block until the job's status is in ``statuses``; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.get(job_uuid).status
            if status in statuses:
                return status
            time.sleep(0.05)
        raise AssertionError(f"job {job_uuid} did not reach {statuses}; history "
                             f"{self.get(job_uuid).statuses}")

    def shutdown(self) -> None:
        """Stop the threads and scancel every SLURM job that is not terminal."""
        self._stop.set()
        with self._lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            remote = job.fields["remoteJobId"]
            if remote and job.status not in TERMINAL:
                with contextlib.suppress(Exception):
                    self.host(job).run(f"scancel {remote}", timeout=15)
        for job in jobs:
            for th in job.threads:
                th.join(timeout=10)
        if self._monitor is not None:
            self._monitor.join(timeout=10)

    # ------------------------------------------------------------------ status bookkeeping

    def _set_status(self, job: JobRecord, status: str, message: str | None = None) -> None:
        """Record a status change (lock held)."""
        old = job.status
        now = tapis_ts()
        job.fields["status"] = status
        job.fields["lastUpdated"] = now
        job.fields["lastMessage"] = message or f"Setting job status to {status}."
        desc = f"The job has transitioned to a new status: {status}."
        if job.history:
            desc += f" The previous job status was {old}."
        job.history.append({"event": "JOB_NEW_STATUS", "created": now, "eventDetail": status,
                            "description": desc, "transferTaskUuid": None})

    def _end(self, job: JobRecord, status: str, condition: str | None,
             message: str | None = None) -> None:
        if job.fields["condition"] is None:
            job.fields["condition"] = condition
        self._set_status(job, status, message)
        job.fields["ended"] = job.fields["lastUpdated"]

    def _advance(self, job: JobRecord, status: str) -> bool:
        """Move on unless the job was cancelled/failed meanwhile; False = stop working."""
        with self._lock:
            if job.status in TERMINAL:
                return False
            self._set_status(job, status)
            return True

    # ------------------------------------------------------------------ submit

    def _op_submitJob(self, req: Request):
        apps = self.standin.apps

        def working_dir(system: ExecSystem) -> str:
            try:
                return apps.hosts[system.id].working_dir()
            except RemoteError as e:
                raise ApiError(500, f"JOBS_HOST_EVAL_ERROR Unable to resolve jobWorkingDir "
                                    f"on system {system.id}: {e}") from None

        with self._lock:  # the apps/systems tables do not change under the validation
            fields, extras = build_job(req.body, user=req.user, tenant=req.tenant, apps=apps,
                                       resolve_working_dir=working_dir)
        host = apps.hosts[fields["execSystemId"]]
        try:  # "required paths are created on the execution system" at submission
            host.mkdirs(*{fields[k] for k in ("execSystemExecDir", "execSystemInputDir",
                                              "execSystemOutputDir")})
        except RemoteError as e:
            raise ApiError(500, f"JOBS_SUBMIT_ERROR1 Error submitting job {fields['uuid']} for "
                                f"application {fields['appId']}. Error: {e}") from None
        job = JobRecord(fields=fields, extras=extras)
        with self._lock:
            fields["id"] = self._next_id
            self._next_id += 1
            self._set_status(job, "PENDING", "Job created")
            self.jobs[job.uuid] = job
            display = copy.deepcopy(job.fields)
            self._start_thread(job, self._work, f"standin-job-{job.fields['id']}")
        return None, java_envelope(display, f"JOBS_CREATED Job {job.uuid} created.", "jobs")

    def _start_thread(self, job: JobRecord, target: Callable[[JobRecord], None],
                      name: str) -> None:
        th = threading.Thread(target=target, args=(job,), name=name, daemon=True)
        job.threads.append(th)
        th.start()

    def _work(self, job: JobRecord) -> None:
        """PENDING -> ... -> QUEUED; then the monitor takes over."""
        try:
            if not self._advance(job, "PROCESSING_INPUTS"):
                return
            if not self._advance(job, "STAGING_INPUTS"):
                return
            self._stage_inputs(job)
            if not self._advance(job, "STAGING_JOB"):
                return
            self._stage_job(job)
            if not self._advance(job, "SUBMITTING_JOB"):
                return
            self._submit(job)
        except JobFailure as f:
            with self._lock:
                if job.status not in TERMINAL:
                    self._end(job, "FAILED", f.condition, f.message)
            return
        except Exception as e:  # a stand-in bug: the job fails visibly
            with self._lock:
                if job.status not in TERMINAL:
                    self._end(job, "FAILED", "JOB_INTERNAL_ERROR", f"stand-in error: {e!r}")
            return
        self._ensure_monitor()

    def _stage_inputs(self, job: JobRecord) -> None:
        host = self.host(job)
        input_dir = job.fields["execSystemInputDir"]
        for fi in job.extras["inputs"]:
            m = re.fullmatch(r"(tapis|tapislocal)://([^/]+)(/.*)?", fi["sourceUrl"])
            assert m is not None
            if m.group(1) == "tapislocal":
                continue  # in place: no transfer
            src_sys = self.standin.apps.systems[m.group(2)]
            try:
                src = src_sys.abs_path(m.group(3) or "/")
                dst = posixpath.join(input_dir, fi["targetPath"])
                if src_sys.id == job.system.id:
                    host.check(f"mkdir -p {shlex.quote(posixpath.dirname(dst))} && "
                               f"cp -r -- {shlex.quote(src)} {shlex.quote(dst)}")
                else:
                    self._copy_between(self.standin.apps.hosts[src_sys.id], src, host, dst)
            except (RemoteError, ValueError, OSError) as e:
                raise JobFailure("JOB_UNABLE_TO_STAGE_INPUTS",
                                 f"JOBS_STAGE_INPUTS_ERROR Unable to stage input "
                                 f"{fi['sourceUrl']} for job {job.uuid}: {e}") from None

    @staticmethod
    def _copy_between(src_host: SSHHost, src: str, dst_host: SSHHost, dst: str) -> None:
        dst_host.mkdirs(posixpath.dirname(dst))
        with src_host.sftp() as s_sftp, dst_host.sftp() as d_sftp, \
                s_sftp.open(src, "rb") as fin, d_sftp.open(dst, "wb") as fout:
            while chunk := fin.read(1 << 16):
                fout.write(chunk)

    def _stage_job(self, job: JobRecord) -> None:
        """Stage and unpack the ZIP archive, find the executable, write the launch files."""
        host = self.host(job)
        exec_dir = job.fields["execSystemExecDir"]
        q_exec = always_single_quote(exec_dir)
        image = job.extras["app"]["containerImage"]
        try:
            if image.startswith("/"):
                archive = posixpath.normpath(image)
            else:
                archive = self._fetch_image(job, image, host, exec_dir)
                job.extras["downloaded_archive"] = archive
            if archive.endswith(".zip"):
                host.check("command -v unzip")
                cmd = f"cd {q_exec}; unzip -o {always_single_quote(archive)}"
            else:
                cmd = f"cd {q_exec}; tar -xf {always_single_quote(archive)}"
            rc, out, err = host.run(cmd)
            if rc != 0:
                raise JobFailure("JOB_UNABLE_TO_STAGE_JOB",
                                 f"JOBS_ZIP_EXTRACT_ERROR Job {job.uuid}: command {cmd} exited "
                                 f"{rc}: {(err or out).strip()}")
            setexec = posixpath.join(exec_dir, JOB_ZIP_SET_EXEC_SCRIPT)
            host.write_file(setexec, SET_EXEC_SCRIPT.encode(), 0o770)
            rc, out, _ = host.run(f"cd {q_exec}; ./{JOB_ZIP_SET_EXEC_SCRIPT}")
            host.run(f"cd {q_exec}; /bin/rm {JOB_ZIP_SET_EXEC_SCRIPT}")
            lines = out.strip().splitlines()
            if rc != 0 or not lines:
                raise JobFailure("JOB_UNABLE_TO_STAGE_JOB",
                                 f"JOBS_ZIP_SETEXEC_ERROR Job {job.uuid}: "
                                 f"{' '.join(lines) or 'no application executable found'}")
            executable = lines[-1].strip()
            ps = job.param_set
            try:
                user_opts = parse_scheduler_options([a["arg"] for a in ps["schedulerOptions"]])
            except SchedulerOptionError as e:
                raise JobFailure("JOB_UNABLE_TO_STAGE_JOB", str(e)) from None
            out_dir = job.fields["execSystemOutputDir"]
            stdout_path = posixpath.join(out_dir, ps["logConfig"]["stdoutFilename"])
            stderr_path = posixpath.join(out_dir, ps["logConfig"]["stderrFilename"])
            directives = batch_directives(
                user_opts, nodes=job.fields["nodeCount"], cores_per_node=job.fields[
                    "coresPerNode"], max_minutes=job.fields["maxMinutes"],
                memory_mb=job.fields["memoryMB"], partition=job.extras["queue"].hpc_queue_name,
                stdout_path=stdout_path, stderr_path=stderr_path)
            prefix = (job.fields["cmdPrefix"] + " ") if job.fields["cmdPrefix"] else ""
            script = wrapper_script(directives, executable=executable,
                                    app_args=[a["arg"] for a in ps["appArgs"]],
                                    stdout_path=stdout_path, stderr_path=stderr_path,
                                    cmd_prefix=prefix)
            host.write_file(posixpath.join(exec_dir, JOB_WRAPPER_SCRIPT), script.encode(), 0o770)
            env = [(kv["key"], kv["value"]) for kv in ps["envVariables"]]
            host.write_file(posixpath.join(exec_dir, JOB_ENV_FILE), env_file(env).encode(),
                            0o660)
        except RemoteError as e:
            raise JobFailure("JOB_UNABLE_TO_STAGE_JOB",
                             f"JOBS_STAGE_JOB_ERROR Unable to stage job {job.uuid}: {e}") from None

    def _fetch_image(self, job: JobRecord, image: str, host: SSHHost, exec_dir: str) -> str:
        name = posixpath.basename(image.split("?", 1)[0].rstrip("/"))
        if not name:
            raise JobFailure("JOB_UNABLE_TO_STAGE_JOB",
                             f"JOBS_ZIP_CONTAINER_FILENAME_ERR No file name in {image}")
        dest = posixpath.join(exec_dir, name)
        m = re.fullmatch(r"tapis://([^/]+)(/.*)?", image)
        if m:
            src_sys = self.standin.apps.systems.get(m.group(1))
            if src_sys is None:
                raise JobFailure("JOB_UNABLE_TO_STAGE_JOB",
                                 f"JOBS_ZIP_CONTAINER_URL_INVALID Unknown system in {image}")
            src = src_sys.abs_path(m.group(2) or "/")
            if src_sys.id == job.system.id:
                host.check(f"cp -- {shlex.quote(src)} {shlex.quote(dest)}")
            else:
                self._copy_between(self.standin.apps.hosts[src_sys.id], src, host, dest)
            return dest
        try:
            with urllib.request.urlopen(image, timeout=60) as resp:  # http(s) URLs
                data = resp.read()
        except OSError as e:
            raise JobFailure("JOB_UNABLE_TO_STAGE_JOB",
                             f"JOBS_ZIP_DOWNLOAD_ERROR Cannot download {image}: {e}") from None
        host.write_file(dest, data, 0o660)
        return dest

    def _submit(self, job: JobRecord) -> None:
        host = self.host(job)
        cmd = (f"cd {always_single_quote(job.fields['execSystemExecDir'])};"
               f"sbatch {JOB_WRAPPER_SCRIPT}")
        try:
            rc, out, err = host.run(cmd)
        except RemoteError as e:
            raise JobFailure("JOB_LAUNCH_FAILURE", str(e)) from None
        slurm_id = parse_sbatch_output(out) if rc == 0 else None
        if slurm_id is None:
            raise JobFailure("JOB_LAUNCH_FAILURE",
                             f"JOBS_SUBMIT_ERROR2 ZipLauncher received exit code {rc} when "
                             f'submitting job {job.uuid} using command "{cmd}". Result:\n'
                             f"{(out + err).strip()}")
        with self._lock:
            job.fields.update(remoteJobId=slurm_id, remoteSubmitted=tapis_ts(),
                              remoteQueue=job.extras["queue"].hpc_queue_name)
            cancelled = job.status in TERMINAL or self._stop.is_set()
            if not cancelled:
                self._set_status(job, "QUEUED")
        if cancelled:  # cancelJob (or the stand-in's stop) arrived while sbatch ran
            with contextlib.suppress(RemoteError):
                host.run(f"scancel {slurm_id}")

    # ------------------------------------------------------------------ monitoring

    def _ensure_monitor(self) -> None:
        with self._lock:
            if self._monitor is None or not self._monitor.is_alive():
                self._monitor = threading.Thread(target=self._monitor_loop,
                                                 name="standin-slurm-monitor", daemon=True)
                self._monitor.start()

    def _monitor_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            with self._lock:
                watched = [j for j in self.jobs.values()
                           if j.status in ("QUEUED", "RUNNING") and j.fields["remoteJobId"]
                           and "outcome_seen" not in j.extras]
            by_system: dict[str, list[JobRecord]] = {}
            for job in watched:
                by_system.setdefault(job.system.id, []).append(job)
            for system_id, jobs in by_system.items():
                try:
                    self._poll(system_id, jobs)
                except Exception as e:
                    with self._lock:
                        for job in jobs:
                            job.fields["remoteChecksFailed"] += 1
                            job.fields["lastMessage"] = f"stand-in monitor: {e}"

    def _poll(self, system_id: str, jobs: list[JobRecord]) -> None:
        """ONE squeue for all watched jobs of a system."""
        host = self.standin.apps.hosts[system_id]
        ids = ",".join(j.fields["remoteJobId"] for j in jobs)
        self.squeue_calls += 1
        rc, out, _ = host.run("squeue --noheader -t all -O 'jobid:|,statecompact:|,exit_code:|'"
                              f" -j {ids} 2>/dev/null")
        states: dict[str, tuple[str, int]] = {}
        for line in out.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) >= 3 and parts[0]:
                with contextlib.suppress(ValueError):
                    states[parts[0]] = (parts[1], int(parts[2] or 0))
        now = tapis_ts()
        for job in jobs:
            with self._lock:
                if job.status in TERMINAL:
                    continue
                job.fields["remoteLastStatusCheck"] = now
                got = states.get(job.fields["remoteJobId"])
                if rc != 0 or got is None:
                    job.fields["remoteChecksFailed"] += 1
                    job.missing_polls += 1
                    if job.missing_polls >= self.missing_polls_limit:
                        self._end(job, "FAILED", "JOB_EXECUTION_MONITORING_ERROR",
                                  f"JOBS_MONITOR_NO_STATUS SLURM job {job.fields['remoteJobId']}"
                                  " is unknown to squeue.")
                    continue
                job.missing_polls = 0
                job.fields["remoteChecksSuccess"] += 1
                kind, state, condition, exit_code = interpret_squeue(*got)
                if kind == "queued":
                    continue
                if job.status == "QUEUED":
                    job.fields["remoteStarted"] = now
                    self._set_status(job, "RUNNING")
                if kind == "active":
                    continue
                job.fields["remoteEnded"] = now
                job.fields["remoteResultInfo"] = exit_code
                if kind == "done":
                    job.fields["remoteOutcome"] = "FINISHED"
                else:
                    job.fields["condition"] = job.fields["condition"] or condition
                    job.final_message = (
                        f"JOBS_USER_APP_FAILURE The user application "
                        f"({job.fields['remoteJobId']}) ended with remote status \"{state}\" "
                        f"and returned exit code: {exit_code}.")
                    job.fields["remoteOutcome"] = ("FAILED" if job.fields["archiveOnAppError"]
                                                   else "FAILED_SKIP_ARCHIVE")
                job.extras["outcome_seen"] = True
                self._start_thread(job, self._archive_and_end,
                                   f"standin-archive-{job.fields['id']}")

    # ------------------------------------------------------------------ archiving

    def _archive_and_end(self, job: JobRecord) -> None:
        if not self._advance(job, "ARCHIVING"):
            return
        try:
            if job.fields["remoteOutcome"] != "FAILED_SKIP_ARCHIVE":
                self._archive(job)
        except Exception as e:  # RemoteError, OSError, or a stand-in bug: visible, not stuck
            with self._lock:
                if job.status not in TERMINAL:
                    self._end(job, "FAILED", "JOB_ARCHIVING_FAILED",
                              f"JOBS_ARCHIVE_ERROR Archiving job {job.uuid} failed: {e}")
            return
        with self._lock:
            if job.status in TERMINAL:
                return
            if job.fields["remoteOutcome"] == "FINISHED":
                self._end(job, "FINISHED", "NORMAL_COMPLETION")
            else:
                self._end(job, "FAILED", "JOB_REMOTE_OUTCOME_ERROR", job.final_message)

    def _archive(self, job: JobRecord) -> None:
        f = job.fields
        host = self.host(job)
        archive_dir = f["archiveSystemDir"]
        out_dir = f["execSystemOutputDir"]
        exec_dir = f["execSystemExecDir"]
        flt = job.param_set["archiveFilter"]
        if f["archiveSystemId"] != f["execSystemId"]:
            arch_sys = self.standin.apps.systems[f["archiveSystemId"]]
            dst_host = self.standin.apps.hosts[arch_sys.id]
            archive_abs = arch_sys.abs_path(archive_dir)
        else:
            dst_host, archive_abs = host, job.system.abs_path(archive_dir)
        same_as_output = dst_host is host and archive_abs == out_dir
        copies: list[tuple[str, str]] = []
        if flt["includeLaunchFiles"] and not (dst_host is host and archive_abs == exec_dir):
            copies += [(posixpath.join(exec_dir, n), posixpath.join(archive_abs, n))
                       for n in (JOB_WRAPPER_SCRIPT, JOB_ENV_FILE)]
        if not same_as_output:
            for rel in self._output_files(host, out_dir):
                if _archive_selected(rel, flt["includes"], flt["excludes"]):
                    copies.append((posixpath.join(out_dir, rel), posixpath.join(archive_abs, rel)))
        dst_host.mkdirs(archive_abs)
        for src, dst in copies:
            if dst_host is host:
                host.check(f"mkdir -p {shlex.quote(posixpath.dirname(dst))} && "
                           f"cp -p -- {shlex.quote(src)} {shlex.quote(dst)}")
            else:
                self._copy_between(host, src, dst_host, dst)
        downloaded = job.extras.get("downloaded_archive")
        if downloaded and not any(a["arg"].strip() == "--tapis-zip-save"
                                  for a in job.param_set["containerArgs"]):
            host.run(f"/bin/rm -f {shlex.quote(downloaded)}")

    @staticmethod
    def _output_files(host: SSHHost, out_dir: str) -> list[str]:
        files: list[str] = []
        with host.sftp() as sftp:
            todo = [""]
            while todo:
                rel = todo.pop(0)
                for entry in sftp.listdir_attr(posixpath.join(out_dir, rel)):
                    child = posixpath.join(rel, entry.filename) if rel else entry.filename
                    if stat.S_ISDIR(entry.st_mode or 0):
                        todo.append(child)
                    else:
                        files.append(child)
        return sorted(files)

    # ------------------------------------------------------------------ read routes

    def _op_getJob(self, req: Request):
        job = self.get(req.params["jobUuid"])
        with self._lock:
            result = copy.deepcopy(job.fields)
        return None, java_envelope(result, f"JOBS_RETRIEVED Job {job.uuid} retrieved.", "jobs")

    def _op_getJobStatus(self, req: Request):
        job = self.get(req.params["jobUuid"])
        with self._lock:
            result = {"status": job.status, "condition": job.fields["condition"]}
        return None, java_envelope(result, f"JOBS_STATUS_RETRIEVED Status of the Job "
                                           f"{job.uuid} retrieved.", "jobs")

    def _op_getJobHistory(self, req: Request):
        job = self.get(req.params["jobUuid"])
        limit = req.q_int("limit", 100) or 100
        skip = req.q_int("skip", 0) or 0
        with self._lock:
            result = copy.deepcopy(job.history[skip:skip + limit])
        meta = {"recordCount": len(result), "recordLimit": limit, "recordsSkipped": skip,
                "orderBy": None, "startAfter": None, "totalCount": -1}
        return None, java_envelope(result, f"JOBS_HISTORY_RETRIEVED Job {job.uuid} history "
                                           f"retrieved for user {req.user} tenant {req.tenant}",
                                   "jobs", metadata=meta)

    def _visible_jobs(self, req: Request) -> list[dict[str, Any]]:
        list_type = req.q("listType", "MY_JOBS")
        if list_type not in ("MY_JOBS", "SHARED_JOBS", "ALL_JOBS"):
            raise ApiError(400, f"JOBS_INVALID_LISTTYPE Invalid listType: {list_type}")
        with self._lock:
            if list_type == "SHARED_JOBS":
                return []
            return [copy.deepcopy(j.fields) for j in self.jobs.values()
                    if j.fields["owner"] == req.user and j.fields["tenant"] == req.tenant]

    def _op_getJobList(self, req: Request):
        rows, meta = page(req, self._visible_jobs(req))
        result = [{k: r[k] for k in SUMMARY_FIELDS} for r in rows]
        return None, java_envelope(result, f"JOBS_LIST_RETRIVED Jobs list for the user "
                                           f"{req.user} in the tenant {req.tenant} retrived.",
                                   "jobs", metadata=meta)

    def _op_getJobSearchList(self, req: Request):
        rows = self._visible_jobs(req)
        for key, values in req.query.items():
            if key.lower() in RESERVED_QUERY:
                continue
            for value in values:
                rows = [r for r in rows if matches(r, key, value)]
        rows, meta = page(req, rows)
        select = [s.strip() for s in (req.q("select") or "summaryAttributes").split(",")
                  if s.strip()]
        if "allAttributes" in select:
            result = rows
        else:
            wanted = ["uuid"]
            for name in select:
                wanted += list(SUMMARY_FIELDS) if name == "summaryAttributes" else [name]
            unknown = [w for w in wanted if rows and w not in rows[0]]
            if unknown:
                raise ApiError(400, f"JOBS_SEARCH_INVALID_SELECTLIST_ERROR Invalid select "
                                    f"attribute(s): {unknown}")
            result = [{k: r[k] for k in dict.fromkeys(wanted) if k in r} for r in rows]
        return None, java_envelope(result, f"JOBS_SEARCH_RESULT_LIST_RETRIEVED Jobs search list "
                                           f"for the user {req.user} in the tenant "
                                           f"{req.tenant} retrieved.", "jobs", metadata=meta)

    # ------------------------------------------------------------------ cancel

    def _op_cancelJob(self, req: Request):
        job = self.get(req.params["jobUuid"])
        with self._lock:
            if job.status in TERMINAL:
                raise ApiError(409, f"JOBS_JOB_IN_TERMINAL_STATE Job {job.uuid} is in a Terminal "
                                    "state (CANCELLED, FINISHED or FAILED) and can't be "
                                    "canceled.", result={"name": job.uuid})
            self._start_thread(job, self._cancel, f"standin-cancel-{job.fields['id']}")
        return None, java_envelope(
            {"message": f"JOBS_JOB_CANCEL_ACCEPTED Request to cancel job {job.uuid} has been "
                        "accepted. "},
            f"JOBS_JOB_CANCEL_ACCEPTED_DETAILS Request to cancel job {job.uuid} has been "
            "accepted. If the job is in a terminal state, the request will have no effect. If "
            "the job is transitioning between active and blocked states, another cancel "
            "request may need to be sent.", "jobs")

    def _cancel(self, job: JobRecord) -> None:
        with self._lock:
            if job.status in TERMINAL:
                return
            self._end(job, "CANCELLED", "CANCELLED_BY_USER",
                      f"JOBS_CANCELLED Job {job.uuid} cancelled by user.")
            remote = job.fields["remoteJobId"]
        if remote:
            with contextlib.suppress(RemoteError):
                self.host(job).run(f"scancel {remote}")

    # ------------------------------------------------------------------ output routes

    def _output_location(self, req: Request, job: JobRecord) -> tuple[ExecSystem, SSHHost, str]:
        if job.status not in TERMINAL and not req.q_bool("allowIfRunning"):
            raise ApiError(400, f"JOBS_JOB_NOT_TERMINATED Job {job.uuid} has not terminated "
                                f"yet: user {req.user} tenant: {req.tenant} job status: "
                                f"{job.status} ", result={"name": job.uuid})
        f = job.fields
        archived = f["status"] == "FINISHED" or (f["status"] == "FAILED" and f["remoteOutcome"]
                                                 not in (None, "FAILED_SKIP_ARCHIVE"))
        sys_id, base = ((f["archiveSystemId"], f["archiveSystemDir"]) if archived
                        else (f["execSystemId"], f["execSystemOutputDir"]))
        system = self.standin.apps.systems[sys_id]
        try:
            path = system.abs_path(posixpath.join(base, req.params["outputPath"].lstrip("/")))
        except ValueError as e:
            raise ApiError(400, f"JOBS_INVALID_PATH {e}") from None
        return system, self.standin.apps.hosts[sys_id], path

    def _op_getJobOutputList(self, req: Request):
        job = self.get(req.params["jobUuid"])
        system, host, path = self._output_location(req, job)
        # JobOutputListingResource: recursive unless limit is given or skip is non-zero
        recursive = req.q_int("limit") is None and not req.q_int("skip", 0)
        try:
            files = self.standin.files.listing(system, host, path, recurse=recursive)
        except RemoteError as e:
            raise ApiError(500, f"FILES_REMOTE_FILESLIST_ERROR {e}") from None
        limit, skip = req.q_int("limit", 100) or 100, req.q_int("skip", 0) or 0
        files = files[skip:skip + limit]
        meta = {"recordCount": len(files), "recordLimit": limit, "recordsSkipped": skip,
                "orderBy": None, "startAfter": None, "totalCount": 0}
        return None, java_envelope(files, f"JOBS_OUTPUT_FILES_LIST_RETRIEVED Job {job.uuid} "
                                          f"output files list retrieved for the user {req.user}"
                                          f" in the tenant {req.tenant}.", "jobs", metadata=meta)

    def _op_getJobOutputDownload(self, req: Request):
        job = self.get(req.params["jobUuid"])
        _, host, path = self._output_location(req, job)
        files_api = self.standin.files
        try:
            with host.sftp() as sftp:
                attr = files_api._stat(sftp, path)
                is_dir = stat.S_ISDIR(attr.st_mode or 0)
                empty = is_dir and not sftp.listdir(path)
            if empty:
                return None, java_envelope(
                    {"name": job.uuid}, f"JOBS_EMPTY_DIR_FOR_DOWNLOAD Empty Directory "
                    f"{req.params['outputPath']} found for job {job.uuid} for user {req.user} "
                    f"in tenant{req.tenant}. ", "jobs")
            if is_dir or req.q_bool("compress"):
                reply = files_api.zip_dir(host, path) if is_dir else None
                if reply is None:  # one file, compress=true: a zip holding that file
                    reply = self._zip_one(host, path)
                reply.content_type = "application/octet-stream"
                return 200, reply
            return 200, files_api.stream(host, path)
        except RemoteError as e:
            raise ApiError(500, f"FILES_REMOTE_FILESDOWNLOAD_ERROR {e}") from None

    def _zip_one(self, host: SSHHost, path: str) -> FileReply:
        assert self.standin.workdir is not None
        fd, tmp = tempfile.mkstemp(suffix=".zip", dir=self.standin.workdir)
        buf = io.BytesIO()
        with host.sftp() as sftp:
            sftp.getfo(path, buf)
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as zf:
            zf.writestr(posixpath.basename(path), buf.getvalue())
        return FileReply(Path(tmp), "application/octet-stream",
                         posixpath.basename(path) + ".zip", remove_after=True)


def interpret_squeue(code: str, raw_exit: int) -> tuple[str, str, str | None, str]:
    """An squeue (compact state, raw exit status) -> (queued|active|done|failed, long state,
    failure condition, exit code as ``<exit>:<signal>``), per SlurmStatusType."""
    exit_code = f"{(raw_exit >> 8) & 0xFF}:{raw_exit & 0x7F}"
    if code == "PD":
        return "queued", "PENDING", None, exit_code
    if code in ACTIVE_CODES:
        return "active", code, None, exit_code
    if code in COMPLETED_CODES:
        return "done", "COMPLETED" if code == "CD" else "SPECIAL_EXIT", None, exit_code
    state, condition = FAILED_CODES.get(code, (code, "SCHEDULER_TERMINATED"))
    return "failed", state, condition, exit_code


def _archive_selected(rel: str, includes: list[str], excludes: list[str]) -> bool:
    """Tapis archive filter: excludes first, then includes (empty includes = everything)."""
    def hit(pattern: str) -> bool:
        if pattern.startswith("REGEX:"):
            return re.fullmatch(pattern[6:], rel) is not None or \
                re.fullmatch(pattern[6:], posixpath.basename(rel)) is not None
        return fnmatch.fnmatchcase(rel, pattern) or fnmatch.fnmatchcase(
            posixpath.basename(rel), pattern)
    if any(hit(p) for p in excludes):
        return False
    return not includes or any(hit(p) for p in includes)
