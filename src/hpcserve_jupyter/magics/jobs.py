"""`%serve job ...`: one-off jobs from a notebook (submit a batch file, follow its progress, take
its results as a DataFrame), with the same argument words (`jobcli.add_submit_arguments`),
facade calls and views (`jobviews`) as `hpcserve job`.

    %serve job submit smollm2-135m --input prompts.jsonl --wait
    %serve job status [ID] [--all]          # ID of a live job: a progress bar until it ends
    %serve job results ID -o df             # a DataFrame (list of dicts without pandas)

Its own module so `core.py` stays the session commands; it imports nothing from `core` (core
imports it), and reaches the magics through the small `Host` protocol.
"""

from __future__ import annotations

import argparse
import html
import keyword
import queue
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from IPython.core.error import UsageError

from .. import jobviews
from ..cmdargs import count_arg, seconds_arg
from ..jobcli import add_submit_arguments, submit
from ..views import Text, _View, age, badge

if TYPE_CHECKING:
    from IPython.display import DisplayHandle

    from ..facade import Facade
    from ..jobs import Job

PROGRESS_TICK_S = 0.5  # a followed job's elapsed time is redrawn at least this often

JobView = jobviews.JobList | jobviews.JobDetail  # what a followed job ends as


class Host(Protocol):
    """What the job commands need of the magics (HpcserveMagics)."""

    rich: bool

    @property
    def facade(self) -> Facade: ...

    def user_ns(self) -> dict[str, object]: ...


def add_job_parser(sub: Any) -> None:
    """`job` and its commands, into the line parser's subcommands (`sub`)."""
    job = sub.add_parser("job", help="one-off jobs: a batch file through a model, then "
                         "results as a table (%%serve help job)")
    jsub = job.add_subparsers(dest="job_command", metavar="JOB_COMMAND")
    jsub.required = True
    s = jsub.add_parser("submit", help="submit an OpenAI Batch file (JSONL); --wait shows "
                        "progress until the job ends")
    add_submit_arguments(s)
    s.add_argument("--wait", action="store_true", help="a progress bar until the job ends")
    s.add_argument("--timeout", type=seconds_arg, help="with --wait: give up after SECONDS")
    st = jsub.add_parser("status", help="live jobs; or one job, followed until it ends")
    st.add_argument("id", nargs="?")
    st.add_argument("--all", action="store_true", help="include ended jobs")
    st.add_argument("--once", action="store_true",
                    help="show the job as it is now instead of following it")
    r = jsub.add_parser("results", help="a batch job's answers as a DataFrame (list of dicts "
                        "without pandas); a task's output directory")
    r.add_argument("id")
    r.add_argument("-o", "--output", metavar="VAR", help="store them in VAR instead of "
                   "returning them")
    lg = jsub.add_parser("logs", help="a job's log (driver and engine)")
    lg.add_argument("id")
    lg.add_argument("--tail", type=count_arg, default=100, help="last N lines (0: all)")
    jsub.add_parser("cancel", help="cancel a job (its output so far is kept)").add_argument("id")


class JobNote(_View):
    """A one-line outcome about a job: `NAME: message` (after submit, cancel, results -o)."""

    def __init__(self, job: Job, message: str) -> None:
        self.job = job
        self.message = message

    def text(self) -> str:
        return f"{self.job.name}: {self.message}"

    def html(self) -> str:
        return (f"<code>{html.escape(self.job.name)}</code> {badge(str(self.job.state))} "
                f"{html.escape(self.message)}")


class JobProgress:
    """A followed job: a display updated in place (notebook), printed lines (terminal)."""

    def __init__(self, rich: bool, header: str) -> None:
        self.header = header
        self.last: Job | None = None
        self.last_line = ""
        self.handle: DisplayHandle | None = None
        if rich:
            from IPython.display import display

            self.handle = display(self._bundle(None), raw=True, display_id=True)
        else:
            print(header, flush=True)

    def _bundle(self, job: Job | None) -> dict[str, str]:
        if job is None:
            return {"text/plain": self.header,
                    "text/html": f"<code>{html.escape(self.header)}</code>"}
        return {"text/plain": jobviews.progress_line(job), "text/html": progress_html(job)}

    def update(self, job: Job) -> None:
        self.last = job
        if self.handle is not None:
            self.handle.update(self._bundle(job), raw=True)
            return
        head = jobviews.progress_line(job).split(", ")[0]  # name, state and counts
        if head != self.last_line:
            self.last_line = head
            print(jobviews.progress_line(job), flush=True)

    def tick(self) -> None:
        if self.handle is not None and self.last is not None:
            self.handle.update(self._bundle(self.last), raw=True)

    def done(self) -> None:
        """Back to the header line: the outcome is the cell's result, right below."""
        if self.handle is not None:
            self.handle.update(self._bundle(None), raw=True)


def work_of(job: Job) -> str:
    """What a job does, as `hpcserve job submit` says it: `3 requests`, `a task over 2 input
    files`."""
    if job.kind == "batch":
        return f"{job.total} requests"
    return f"a task over {job.total} input file{'s' if job.total != 1 else ''}"


def progress_html(job: Job) -> str:
    """`NAME [state] [bar] done/total, N failed, elapsed, eta`: one line with a progress bar."""
    extra = [f"{job.failed} failed"] if job.failed else []
    extra.append(f"{age(job.elapsed_s)} elapsed")
    if job.eta_s:
        extra.append(f"eta {jobviews.eta(job)}")
    if job.reason and (job.state.terminal or str(job.state) == "pending"):
        extra.append(job.reason)
    return (f"<code>{html.escape(job.name)}</code> {badge(str(job.state), job.unreachable)} "
            f"{jobviews.bar_html(job)} <small>{html.escape(', '.join(extra))}</small>")


class JobCommands:
    """`%serve job COMMAND`: one method per command, on the magics' facade."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.commands = {"submit": self.submit, "status": self.status,
                         "results": self.results, "logs": self.logs, "cancel": self.cancel}

    def __call__(self, args: argparse.Namespace) -> object:
        return self.commands[args.job_command](args)

    def submit(self, args: argparse.Namespace) -> JobView | JobNote | None:
        job = submit(self.host.facade, args)  # refuses --set of submit's own options
        header = f"submitted {job.name} (id {job.id}): {work_of(job)} on {job.target}"
        if not args.wait:
            return JobNote(job, f"{job.state}; submitted (id {job.id}), {work_of(job)} on "
                           f"{job.target}; `%serve job status {job.name}` follows it")
        followed = self._follow(job, header, args.timeout)
        return None if followed is None else self._outcome(followed)

    def status(self, args: argparse.Namespace) -> JobView | None:
        hp = self.host.facade
        if args.id:
            job = hp.job_status(args.id)
            if job.state.terminal or args.once:
                return jobviews.JobDetail(job)
            followed = self._follow(job, f"following {job.name} (id {job.id})", None)
            return None if followed is None else self._outcome(followed)
        empty = "no jobs" if args.all else \
            "no live jobs (`%serve job status --all` lists ended ones)"
        return jobviews.JobList(hp.jobs(live_only=not args.all), empty=empty)

    def results(self, args: argparse.Namespace) -> object:
        var = args.output
        if var is not None and (not var.isidentifier() or keyword.iskeyword(var)):
            raise UsageError(f"-o {var!r}: not a Python variable name")
        from ..jobhandle import JobHandle

        hp = self.host.facade
        handle = JobHandle(hp, hp.job_status(args.id))
        data = handle.results()  # a task's: its output directory (a Path)
        if var is None:
            return data
        self.host.user_ns()[var] = data
        job = handle.job
        if isinstance(data, Path):
            return JobNote(job, f"output directory {data} in {var} ({job.state})")
        return JobNote(job, f"{len(data)} results in {var} ({job.state}, {job.done}/"
                       f"{job.total} answered, {job.failed} failed)")

    def logs(self, args: argparse.Namespace) -> Text:
        hp = self.host.facade
        job = hp.job_status(args.id)
        what = f"last {args.tail} lines" if args.tail else "whole log"
        return Text(hp.job_logs(job.id, tail=args.tail or None), title=f"{job.name}: {what}")

    def cancel(self, args: argparse.Namespace) -> JobNote:
        job = self.host.facade.cancel_job(args.id)
        return JobNote(job, f"{job.state} ({job.done}/{job.total} answered, kept in "
                       f"{job.output})")

    # ------------------------------------------------------------------ following

    def _follow(self, job: Job, header: str, timeout: float | None) -> Job | None:
        """facade.wait_job on a worker thread while this thread (the cell's, which display
        updates belong to) draws its progress. Ctrl-C stops following, not the job: None."""
        hp = self.host.facade
        updates: queue.Queue[Job | None] = queue.Queue()  # None: the wait is over
        waited: list[Job] = []
        failed: list[BaseException] = []

        def work() -> None:
            try:
                waited.append(hp.wait_job(job.id, timeout=timeout, progress=updates.put))
            except BaseException as exc:
                failed.append(exc)
            finally:
                updates.put(None)

        progress = JobProgress(self.host.rich, header)
        try:
            threading.Thread(target=work, name="hpcserve-job-wait", daemon=True).start()
            while True:
                try:
                    item = updates.get(timeout=PROGRESS_TICK_S)
                except queue.Empty:
                    progress.tick()
                    continue
                if item is None:
                    break
                progress.update(item)
        except KeyboardInterrupt:
            progress.done()
            print(f"hpcserve: stopped following; job {job.name} goes on: "
                  f"`%serve job status {job.name}` or `%serve job cancel {job.name}`",
                  file=sys.stderr)
            return None
        progress.done()
        if failed:
            raise failed[0]
        return waited[0]

    def _outcome(self, job: Job) -> JobView:
        if str(job.state) == "done":
            return jobviews.JobList([job])
        print(f"hpcserve: job {job.name} {job.state}: {job.reason}", file=sys.stderr)
        return jobviews.JobDetail(job)
