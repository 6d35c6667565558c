"""`hpcserve job ...`: one-off jobs from the command line (submit, status, results, logs,
cancel), through the same facade and views as everything else.

    hpcserve job submit RECIPE --input FILE [--output PATH] [--on TARGET] [--wait] [--json]

Exit codes as for the other commands; `submit --wait` exits 0 only when the job is `done`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from . import jobviews
from .cmdargs import count_arg, launch_overrides, parse_sets, seconds_arg
from .errors import BadInput

if TYPE_CHECKING:
    from .facade import Facade
    from .jobs import Job

EXIT_OK, EXIT_FAIL = 0, 1


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_submit_arguments(p: argparse.ArgumentParser) -> None:
    """What `hpcserve job submit` and `%serve job submit` both take."""
    p.add_argument("recipe")
    p.add_argument("--input", "-i", required=True, metavar="PATH",
                   help="an OpenAI Batch file (JSONL): one request per line")
    p.add_argument("--output", "-o", metavar="PATH", help="where the output JSONL lands "
                   "(default: in the job's directory); an existing file is resumed")
    p.add_argument("--on", default="local", metavar="TARGET", help="target (default: local)")
    p.add_argument("--backend", "-b", help="serving engine (default: the recipe's first)")
    p.add_argument("--name", help="job name (default: RECIPE-job-N)")
    p.add_argument("--concurrency", "-c", type=positive_int, default=8,
                   help="requests in flight (default: 8)")
    p.add_argument("--resume", metavar="ID", help="skip what job ID already answered")
    p.add_argument("--runner", choices=("auto", "generic", "engine"), default="auto",
                   help="who sends the requests: generic (this tool's runner), engine (the "
                   "engine's own, e.g. vllm run-batch), auto (default: the faster where it "
                   "answers every line)")
    p.add_argument("--gpus", help="GPUs")
    p.add_argument("--time", help="time limit, e.g. 30m, 2h (the job ends `timeout` then)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field (repeatable)")


def add_job_parser(sub: Any) -> None:
    job = sub.add_parser("job", help="one-off jobs: batch inference over a file")
    jsub = job.add_subparsers(dest="job_command", metavar="JOB_COMMAND")
    jsub.required = True
    s = jsub.add_parser("submit", help="submit a batch file; prints the job id")
    add_submit_arguments(s)
    s.add_argument("--wait", action="store_true", help="print progress until the job ends")
    s.add_argument("--timeout", type=seconds_arg, help="with --wait: give up after SECONDS")
    s.add_argument("--json", action="store_true")
    st = jsub.add_parser("status", help="list jobs, or show one")
    st.add_argument("id", nargs="?")
    st.add_argument("--all", action="store_true", help="include ended jobs")
    st.add_argument("--json", action="store_true")
    r = jsub.add_parser("results", help="write (or print) a job's output JSONL")
    r.add_argument("id")
    r.add_argument("--output", "-o", metavar="PATH", help="copy it here instead of printing")
    lg = jsub.add_parser("logs", help="show a job's log (driver and engine)")
    lg.add_argument("id")
    lg.add_argument("--tail", type=count_arg, default=100, help="last N lines (0: all)")
    c = jsub.add_parser("cancel", help="cancel a job (its output so far is kept)")
    c.add_argument("id")


def status_json(job: Job) -> dict[str, Any]:
    return job.public()


# submit_job()'s own arguments: `--set` must not reach it under these names (their options)
SUBMIT_OPTIONS = {"input": "--input", "output": "--output", "concurrency": "--concurrency",
                  "resume": "--resume", "runner": "--runner"}


def submit(api: Facade, args: argparse.Namespace) -> Job:
    """Submit as `hpcserve job submit` and `%serve job submit` both do."""
    for key in parse_sets(args.set):  # malformed pairs: launch_overrides' own message
        if key in SUBMIT_OPTIONS:
            raise BadInput(f"unknown override {key!r}: it is not a recipe field",
                           hint=f"use {SUBMIT_OPTIONS[key]}")
    backend, overrides = launch_overrides(args)
    handle = api.submit_job(args.recipe, args.input, on=args.on, backend=backend,
                            name=args.name, output=args.output, concurrency=args.concurrency,
                            resume=args.resume, runner=args.runner, **overrides)
    return handle.job


class Progress:
    """A progress line on stderr whenever the state or counts change."""

    def __init__(self) -> None:
        self.last = ""
        self.start = time.monotonic()

    def __call__(self, job: Job) -> None:
        line = jobviews.progress_line(job)
        if line.split(", ")[0] != self.last:
            self.last = line.split(", ")[0]
            print(line, file=sys.stderr, flush=True)


def cmd_job(args: argparse.Namespace, api: Facade) -> int:
    command = args.job_command
    if command == "submit":
        job = submit(api, args)
        what = f"{job.total} requests" if job.kind == "batch" else \
            f"a task over {job.total} input file{'s' if job.total != 1 else ''}"
        print(f"submitted {job.name} (id {job.id}): {what} on {job.target}", file=sys.stderr)
        if args.wait:
            job = api.wait_job(job.id, timeout=args.timeout, progress=Progress())
        print(json.dumps(status_json(job), indent=2, default=str) if args.json else job.id)
        if args.wait and job.state != "done":
            print(f"hpcserve: job {job.name} {job.state}: {job.reason}", file=sys.stderr)
            if job.log_tail:
                print("--- last lines of the job log ---\n" + job.log_tail, file=sys.stderr)
            return EXIT_FAIL
        return EXIT_OK
    if command == "status":
        if args.id:
            job = api.job_status(args.id)
            print(json.dumps(status_json(job), indent=2, default=str) if args.json
                  else jobviews.JobDetail(job).text())
            return EXIT_OK
        jobs = api.jobs(live_only=not args.all)
        if args.json:
            print(json.dumps([status_json(j) for j in jobs], indent=2, default=str))
        else:
            print(jobviews.JobList(jobs, empty="no live jobs (--all lists ended ones)").text())
        return EXIT_OK
    if command == "results":
        path = api.job_results(args.id, output=args.output)
        if args.output:
            print(f"wrote {path}", file=sys.stderr)
        else:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    sys.stdout.write(line)
        return EXIT_OK
    if command == "logs":
        print(api.job_logs(args.id, tail=args.tail or None))
        return EXIT_OK
    job = api.cancel_job(args.id)
    print(f"{job.name}: {job.state} ({job.done}/{job.total} answered, kept in {job.output})",
          file=sys.stderr)
    return EXIT_OK
