"""JobManager: the only owner of job state, beside the SessionManager it builds on.

A job is submitted to a target like a session (the same ServeSpec, LaunchRequest and handle),
except that what runs is the job driver (jobrun.py) wrapped around the engine or task command,
with the input, the driver and job.json staged into the job's directory. Each monitor tick
polls every target once for all its jobs and reads one small file per running job
(progress.json); a job that ended has its output fetched back before it is marked ended, so
its results (partial ones too, for resume) are always local. No Jupyter imports here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets as _random
import shutil
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import batchfile, jobrun
from .errors import BadInput, HpcserveError, LaunchError, NotFound, NotReady
from .jobs import Job, JobState
from .jobstaging import check_image, check_output_dir, stage_task_input, unpack_output
from .jobstore import JobStore
from .manager import SessionManager
from .secrets import redact
from .sessions import NAME_PATTERN
from .spec import HOST, JOBDIR, PORT, PYTHON, ServeSpec
from .store import StaleSession
from .targets.base import LaunchRequest, Phase, TargetStatus

log = logging.getLogger(__name__)

DRIVER = "hpcserve_jobrun.py"
INPUT, OUTPUT, PROGRESS = "input.jsonl", "output.jsonl", "progress.json"
OUTPUT_ZIP = "output.zip"  # a task's output directory, packed by the driver
BATCH_CATEGORIES = ("inference", "embedding")
RUNNERS = ("auto", "generic", "engine")  # who sends a batch job's requests (choose_runner)
# What the driver's final phase means, once the target says the job ended.
_FINAL = {"done": JobState.DONE, "failed": JobState.FAILED, "cancelled": JobState.CANCELLED,
          "timeout": JobState.TIMEOUT}


@dataclass(frozen=True)
class JobLimits:
    """Input limits and the server's image allow-list (c.HpcserveApp.job_max_input_mb,
    c.HpcserveApp.allowed_images...)."""

    max_input_bytes: int = 2 << 30
    max_input_lines: int = 5_000_000
    max_input_files: int = 100_000
    max_concurrency: int = 256
    allowed_images: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobPlan:
    """What one kind of job stages and tells its driver (job.json settings)."""

    kind: str
    total: int
    files: dict[str, Path]
    resumed: int
    summary: str
    settings: dict[str, Any]


class JobManager:
    def __init__(self, sessions: SessionManager, limits: JobLimits | None = None) -> None:
        self.sessions = sessions
        self.store = JobStore(sessions.store)
        self.limits = limits or JobLimits()
        self._told: dict[str, str] = {}  # what subscribers were last told of each job
        sessions.tick_hooks.append(self.tick)
        sessions.event_followers.append(self._follow)

    # ------------------------------------------------------------------ queries

    def jobs(self, *, live_only: bool = False) -> list[Job]:
        return self.store.all(live_only=live_only)

    def get(self, key: str) -> Job:
        found = self.store.find(key)
        if not found:
            from .errors import close_matches

            known = [j.name for j in self.store.all()] + [j.id for j in self.store.all()]
            raise NotFound(f"no job {key!r}", hint=close_matches(key, known) if known
                           else "submit one first (hpcserve job submit RECIPE --input FILE)")
        live = [j for j in found if j.state.live]
        if len(live) > 1:
            raise BadInput(f"{key!r} matches several jobs: "
                           + ", ".join(f"{j.id} ({j.name})" for j in live),
                           hint="use the full job id")
        return (live or found)[0]

    def job_dir(self, job_id: str) -> Path:
        path = self.sessions.home / "jobs" / job_id
        path.parent.mkdir(exist_ok=True, mode=0o700)
        path.mkdir(exist_ok=True, mode=0o700)
        return path

    # ------------------------------------------------------------------ submit

    async def submit(self, recipe: str, input: str | Path, *, target: str = "local",
                     backend: str | None = None, name: str | None = None,
                     output: str | Path | None = None, concurrency: int = 8,
                     resume: str | None = None, overrides: Mapping[str, Any] | None = None,
                     owner: str | None = None, runner: str = "auto") -> Job:
        """Validate everything (recipe, target, image, input, resume), record the job, then
        start it on the target. Bad input fails before anything is recorded or started."""
        spec = self.sessions.resolve(recipe, backend, dict(overrides or {}))
        tgt = self.sessions.target(target)
        if not tgt.runs_jobs:
            raise BadInput(f"target {target!r} ({tgt.kind}) does not run one-off jobs",
                           hint="submit it to a target of a kind that does (local, slurm, "
                           "tapis-pods)")
        if spec.category not in (*BATCH_CATEGORIES, "task"):
            raise BadInput(f"recipe {spec.recipe!r} is a {spec.category} recipe; jobs need an "
                           "inference or embedding recipe (batch) or a task recipe")
        if spec.replicas != 1 or spec.nodes != 1:
            raise BadInput(f"a job runs on one node, once; {spec.recipe!r} asks for "
                           f"{spec.replicas} replicas on {spec.nodes} nodes",
                           hint="submit with replicas=1 nodes=1")
        if runner not in RUNNERS:
            raise BadInput(f"runner must be one of {', '.join(RUNNERS)}, not {runner!r}")
        if not 1 <= concurrency <= self.limits.max_concurrency:
            raise BadInput(f"concurrency must be 1 to {self.limits.max_concurrency}, "
                           f"not {concurrency}")
        if name is not None and not re.fullmatch(NAME_PATTERN, name):
            raise BadInput(f"invalid job name {name!r}",
                           hint="use letters, digits, '.', '_' and '-' (at most 63 characters)")
        if name and self.store.name_in_use(name):
            raise BadInput(f"a live job is already named {name!r}", hint="choose another name")
        check_image(spec.image, [*(tgt.allowed_images or []), *self.limits.allowed_images],
                    target)
        input_path = Path(input).expanduser().absolute()
        job_id = _random.token_hex(4)
        try:
            if spec.category == "task":
                if resume:
                    raise BadInput("task jobs cannot be resumed", hint="submit it again")
                plan = await self._task_plan(spec, input_path, job_id)
            else:
                plan = await self._batch_plan(spec, input_path, output, resume, runner)
        except BaseException:  # nothing of a refused job stays behind
            shutil.rmtree(self.sessions.home / "jobs" / job_id, ignore_errors=True)
            raise
        jobdir = self.job_dir(job_id)
        default_out = jobdir / ("output" if plan.kind == "task" else OUTPUT)
        out_path = Path(output).expanduser().absolute() if output else default_out
        if plan.kind == "task":
            check_output_dir(out_path)
        job = Job(id=job_id, name=name or self._new_name(spec.recipe), kind=plan.kind,
                  recipe=spec.recipe, backend=spec.backend, target=target,
                  input=str(input_path), output=str(out_path), concurrency=concurrency,
                  total=plan.total, done=plan.resumed, resumed=plan.resumed, resume_of=resume,
                  owner=owner or self.sessions.owner)
        files = {DRIVER: Path(jobrun.__file__), "job.json": jobdir / "job.json", **plan.files}
        job_spec = job_driver_spec(spec, engine_batch=plan.settings.get("runner") == "engine")
        job.spec = job_spec.to_dict()
        _write_private(jobdir / "job.json", json.dumps({
            **plan.settings, "kind": plan.kind, "total": plan.total,
            "concurrency": concurrency, "time_limit_s": spec.time_s}))
        self.store.insert(job, "created", f"{plan.summary} with {spec.recipe} "
                          f"({spec.backend}) on {target}")
        self._publish(job, "created")
        req = LaunchRequest(session_id=job.id, name=job.name, spec=job_spec, workdir=jobdir,
                            secrets={"api_key": self.sessions.api_key(job.id)}, files=files)
        try:
            handle = await tgt.launch(req)
        except HpcserveError as exc:
            self._set(job, JobState.FAILED, exc.message, event="launch-failed")
            raise
        except Exception as exc:  # a target bug must still leave a consistent record
            self._set(job, JobState.FAILED, f"launch failed: {exc}", event="launch-failed")
            raise LaunchError(f"job launch on {target!r} failed: {exc}") from exc
        job.handle = handle
        self.store.update(job, "launched", "submitted to the target")
        self.sessions.wake()
        return job

    async def _batch_plan(self, spec: ServeSpec, input_path: Path, output: str | Path | None,
                          resume: str | None, runner: str) -> JobPlan:
        summary = await asyncio.to_thread(
            batchfile.validate_input, input_path, one_model=True,
            max_bytes=self.limits.max_input_bytes, max_lines=self.limits.max_input_lines)
        _check_model(summary.models, spec)
        runner = choose_runner(spec, set(summary.urls), runner)
        earlier = self._earlier_output(resume, output)
        files = {INPUT: input_path}
        resumed = 0
        if earlier is not None:
            resumed = len(await asyncio.to_thread(batchfile.answered_ids, earlier))
            files[OUTPUT] = earlier
        return JobPlan(
            kind="batch", total=summary.total, files=files, resumed=resumed,
            summary=f"batch of {summary.total} requests"
            + (f" ({resumed} answered earlier are skipped)" if resumed else ""),
            settings={"input": INPUT, "output": OUTPUT, "health_path": spec.health_path,
                      "model": spec.served_model_name, "runner": runner})

    async def _task_plan(self, spec: ServeSpec, input_path: Path, job_id: str) -> JobPlan:
        """A task's input: a directory is zipped here, a zip is checked member by member
        (zip-slip, links, size) before anything runs, a single file is staged as it is."""
        limits = self.limits
        staged, total, name = await asyncio.to_thread(
            stage_task_input, input_path, self.job_dir(job_id), limits)
        return JobPlan(
            kind="task", total=total, files={staged.name: staged}, resumed=0,
            summary=f"task over {total} input file{'s' if total != 1 else ''}",
            settings={"input": staged.name, "input_is_zip": staged.suffix == ".zip",
                      "input_name": name, "model": spec.model or "",
                      "max_unpacked_bytes": limits.max_input_bytes,
                      "max_files": limits.max_input_files})

    def _earlier_output(self, resume: str | None, output: str | Path | None) -> Path | None:
        """The output whose answered ids a new run skips: the resumed job's, or an existing
        output file the new job would write to."""
        if resume:
            earlier = self.get(resume)
            if earlier.state.live:
                raise BadInput(f"job {earlier.name} is still {earlier.state}",
                               hint="cancel it first, or wait until it ends")
            path = Path(earlier.output)
            if not path.exists():
                raise BadInput(f"job {earlier.name} left no output at {path} to resume from")
            return path
        if output is not None:
            path = Path(output).expanduser().absolute()
            try:
                if path.is_dir():
                    raise BadInput(f"output {path} is a directory",
                                   hint="name the JSONL file to write")
                if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
                    raise BadInput(f"output {path}: its directory does not exist or cannot "
                                   "be written", hint="create the directory first, or choose "
                                   "another output path")
                if path.exists() and not path.is_file():
                    raise BadInput(f"output {path} is not a regular file")
                if path.exists() and path.stat().st_size:
                    return path
            except OSError as exc:
                raise BadInput(f"output {str(path)[:200]!r} cannot be used: "
                               f"{exc.strerror}") from None
        return None

    def _new_name(self, recipe: str) -> str:
        taken = set(self.store.names_like(f"{recipe}-job"))
        n = 1
        while f"{recipe}-job-{n}" in taken:
            n += 1
        return f"{recipe}-job-{n}"

    # ------------------------------------------------------------------ cancel, logs, wait

    async def cancel(self, key: str) -> Job:
        """Stop a job; its output so far is fetched and kept (resume finishes it)."""
        job = self.get(key)
        for _ in range(10):  # the monitor may write the job meanwhile: read it again
            if job.state.terminal:
                return job
            job.cancel_requested = True
            try:
                self.store.update(job, "cancel", "cancelled by user")
                break
            except StaleSession:
                job = self.store.get(job.id) or job
        if job.handle:
            tgt = self.sessions.target(job.target)
            await tgt.stop(job.handle)
            status = (await tgt.poll({job.id: job.handle})).get(job.id)
            current = self.store.get(job.id) or job
            if status and current.state.live:
                with contextlib.suppress(StaleSession):
                    await self._apply(current, status)
        job = self.store.get(job.id) or job
        if job.state.live:  # the target could not say it ended: keep what can be fetched
            with contextlib.suppress(HpcserveError):
                await self._fetch(job)
            with contextlib.suppress(HpcserveError):
                await self.sessions.target(job.target).release(job.handle or {})
            with contextlib.suppress(StaleSession):
                self._set(job, JobState.CANCELLED, "cancelled by user", event="cancelled")
        return self.store.get(job.id) or job

    async def logs(self, key: str, tail: int | None = 100) -> str:
        job = self.get(key)
        if not job.handle:
            return job.log_tail
        text, _ = await self.sessions.target(job.target).read_logs(job.handle, 0)
        if not text.strip():  # released with its pod: the tail kept when it ended
            text = job.log_tail
        text = redact(text, [self.sessions.api_key(job.id)])
        return "\n".join(text.splitlines()[-tail:]) if tail else text

    async def follow_logs(self, key: str, *, interval: float = 0.5) -> AsyncIterator[str]:
        job = self.get(key)
        if not job.handle:
            return
        tgt, offset, secret = self.sessions.target(job.target), 0, self.sessions.api_key(job.id)
        while True:
            text, offset = await tgt.read_logs(job.handle, offset)
            if text:
                yield redact(text, [secret])
                continue
            current = self.store.get(job.id)
            if current is None or current.state.terminal:
                return
            await asyncio.sleep(interval)

    async def wait(self, key: str, *, timeout: float | None = None,
                   progress: Callable[[Job], None] | None = None) -> Job:
        """Until the job ends; calls `progress` with the job after every tick."""
        job = self.get(key)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self.sessions.monitored:
                await self.sessions.tick()
            job = self.store.get(job.id) or job
            if progress:
                progress(job)
            if job.state.terminal:
                return job
            if deadline and time.monotonic() > deadline:
                raise NotReady(f"job {job.name} is still {job.state} after {timeout:.0f} s",
                               hint="wait longer, or check hpcserve job status")
            await asyncio.sleep(min(self.sessions.poll_interval, 0.5))

    async def results(self, key: str) -> Path:
        """The job's output file here: fetched now from a running job, so partial results
        are readable while it runs."""
        job = self.get(key)
        if job.state.live and job.handle:
            await self._fetch(job)
        path = Path(job.output)
        if not path.exists():
            raise NotReady(f"job {job.name} has no output yet ({job.state})",
                           hint="wait until it runs, or check its logs")
        return path

    # ------------------------------------------------------------------ monitor

    async def tick(self) -> None:
        """One pass (inside the session monitor's tick): one poll per target for all its
        live jobs, then one progress read per running job."""
        by_target: dict[str, list[Job]] = defaultdict(list)
        for job in self.store.all(live_only=True):
            if job.handle:
                by_target[job.target].append(job)
            elif time.time() - job.created_at > self.sessions.launch_grace:
                with contextlib.suppress(StaleSession):
                    self._set(job, JobState.FAILED, "the submission did not complete "
                              "(stopped during launch)", event="launch-lost")
        await asyncio.gather(*(self._poll_target(t, jobs) for t, jobs in by_target.items()))

    async def _poll_target(self, target: str, jobs: list[Job]) -> None:
        try:
            statuses = await self.sessions.target(target).poll(
                {j.id: j.handle or {} for j in jobs})
        except HpcserveError as exc:
            statuses = {j.id: TargetStatus(Phase.UNREACHABLE, reason=exc.message) for j in jobs}
        for job in jobs:
            status = statuses.get(job.id)
            if status is not None:
                with contextlib.suppress(StaleSession):
                    await self._apply(job, status)

    async def _apply(self, job: Job, st: TargetStatus) -> None:
        if st.handle_update:
            job.handle = {**(job.handle or {}), **st.handle_update}
        if st.phase == Phase.UNREACHABLE:
            if not job.unreachable:
                job.unreachable = True
                self.store.update(job, "unreachable", st.reason)
                self._publish(job, "unreachable")
            return
        if job.unreachable:
            job.unreachable = False
            self.store.update(job, "reachable", "target answers again")
        if st.phase == Phase.PENDING:
            if job.state == JobState.PENDING and st.reason and st.reason != job.reason:
                self._set(job, JobState.PENDING, st.reason, event="queued")
            return
        progress = await self._progress(job)
        if st.phase in (Phase.EXITED, Phase.STOPPED, Phase.TIMEOUT):
            await self._ended(job, st, progress)
            return
        self._take_counts(job, progress)
        phase = progress.get("phase", "starting")
        if phase == "running":
            self._set(job, JobState.RUNNING, "processing requests", event="running")
        elif job.state == JobState.PENDING:
            self._set(job, JobState.STARTING, "engine starting", event="starting")
        elif job.state == JobState.RUNNING:
            self._write_counts(job)

    async def _progress(self, job: Job) -> dict[str, Any]:
        try:
            data, _ = await self.sessions.target(job.target).read_file(job.handle or {},
                                                                       PROGRESS)
            return json.loads(data) if data else {}
        except (HpcserveError, ValueError):
            return {}

    def _take_counts(self, job: Job, progress: Mapping[str, Any]) -> None:
        for key in ("total", "done", "failed"):
            if isinstance(progress.get(key), int):
                setattr(job, key, progress[key])
        if isinstance(progress.get("resumed"), int) and progress["resumed"]:
            job.resumed = progress["resumed"]

    def _write_counts(self, job: Job) -> None:
        """Counts changed without a state change: stored, and told to subscribers."""
        before = self.store.get(job.id)
        if before and (before.done, before.failed, before.total) != (job.done, job.failed,
                                                                     job.total):
            self.store.update(job)
            self._publish(job, "progress")

    async def _ended(self, job: Job, st: TargetStatus, progress: Mapping[str, Any]) -> None:
        """Fetch the output (partial or whole), then record how the job ended."""
        self._take_counts(job, progress)
        job.exit_code = st.exit_code
        if st.log_tail:
            job.log_tail = redact(st.log_tail, [self.sessions.api_key(job.id)])
        with contextlib.suppress(HpcserveError):
            await self._fetch(job)
        with contextlib.suppress(HpcserveError):
            await self.sessions.target(job.target).release(job.handle or {})
        phase = str(progress.get("phase", ""))
        reason = str(progress.get("reason") or "")
        if st.phase == Phase.TIMEOUT:
            state, reason = JobState.TIMEOUT, st.reason or "time limit reached"
        elif phase in _FINAL:
            state, reason = _FINAL[phase], reason or phase
        elif job.cancel_requested:
            state, reason = JobState.CANCELLED, "cancelled by user"
        elif st.phase == Phase.STOPPED:
            state, reason = JobState.CANCELLED, st.reason or "stopped outside hpcserve"
        else:
            state, reason = JobState.FAILED, st.reason or "the job ended"
        if state == JobState.DONE:
            reason = (f"{job.done - job.failed} answered, {job.failed} failed"
                      if job.kind == "batch" else f"the task ended; {job.done} of "
                      f"{job.total} done")
        self._set(job, state, reason, event=str(state))

    async def _fetch(self, job: Job) -> None:
        """The output here: a batch's JSONL as it is so far; a task's output.zip (written
        when the task ended) unpacked into the output directory with path checks."""
        tgt = self.sessions.target(job.target)
        if job.kind != "task":
            await tgt.fetch(job.handle or {}, OUTPUT, Path(job.output))
            return
        archive = self.job_dir(job.id) / OUTPUT_ZIP
        if await tgt.fetch(job.handle or {}, OUTPUT_ZIP, archive):
            await asyncio.to_thread(unpack_output, archive, Path(job.output), self.limits)

    # ------------------------------------------------------------------ writes and events

    def _set(self, job: Job, state: JobState, reason: str, *, event: str) -> None:
        reason = redact(reason, [self.sessions.api_key(job.id)])
        changed = job.transition(state, reason)
        if state.terminal:
            job.fetched = Path(job.output).exists()
        self.store.update(job, event, reason)
        if changed:
            self._publish(job, event)

    def _publish(self, job: Job, kind: str) -> None:
        self._told[job.id] = f"{job.state}:{job.done}"
        self.sessions.broadcast({"type": kind, "job": job.public(), "ts": time.time()})

    def _follow(self, event: Mapping[str, Any]) -> None:
        """A job change another process wrote (the CLI submitted, a server monitors)."""
        job = self.store.get(str(event["session_id"]))
        if job is not None and self._told.get(job.id) != f"{job.state}:{job.done}":
            self._publish(job, str(event["kind"]))


def choose_runner(spec: ServeSpec, urls: set[str], asked: str) -> str:
    """`engine` (the engine's own batch runner) or `generic` (the driver feeds the serving
    engine). `auto` takes the engine's runner only where it is measured faster and answers
    every url of the file; otherwise the generic runner serves the whole file."""
    serves = bool(spec.batch_argv) and urls <= set(spec.batch_urls)
    if asked == "engine" and not serves:
        missing = sorted(urls - set(spec.batch_urls))
        raise BadInput(f"backend {spec.backend!r} has no batch runner of its own" if not
                       spec.batch_argv else f"{spec.backend}'s batch runner does not answer "
                       f"{', '.join(missing)}", hint="use --runner generic (or auto)")
    if asked == "engine" or (asked == "auto" and serves and spec.batch_preferred):
        return "engine"
    return "generic"


def job_driver_spec(spec: ServeSpec, *, engine_batch: bool = False) -> ServeSpec:
    """The engine's spec with the job driver around it: the target runs the driver (staged in
    the job's directory), which starts the engine, feeds it and stops it (or runs the engine's
    own batch runner). The engine's key reaches the driver as a secret environment variable,
    never on a command line."""
    engine = spec.batch_argv if engine_batch else spec.argv
    argv = (PYTHON, f"{JOBDIR}/{DRIVER}", "--job", f"{JOBDIR}/job.json", "--host", HOST,
            "--port", PORT, "--", *engine)
    secret_env = (*spec.secret_env, ("HPCSERVE_JOB_KEY", "api_key"))
    return replace(spec, argv=argv, secret_env=secret_env, idle_timeout_s=None,
                   max_lifetime_s=None)


def _check_model(models: tuple[str, ...], spec: ServeSpec) -> None:
    served = {spec.served_model_name, spec.model or ""} - {""}
    wrong = [m for m in models if m not in served]
    if wrong:
        raise BadInput(f"the input's requests name model {wrong[0]!r}, but recipe "
                       f"{spec.recipe!r} serves {spec.served_model_name!r}",
                       hint=f"set \"model\": \"{spec.served_model_name}\" in each body, or "
                       "leave it out (the job fills it in)")


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
