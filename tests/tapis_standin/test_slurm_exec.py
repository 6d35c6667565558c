"""The text Tapis writes (tapisjob.sh, tapisjob.env), its quoting, scheduler options and the
search conditions, without a cluster.  Expected values come from the Tapis sources named in
slurm_exec's docstring; bash itself checks what the quoting does."""

from __future__ import annotations

import subprocess

import pytest

from .common import ApiError
from .job_search import matches as _matches
from .jobs_api import _archive_selected, interpret_squeue
from .slurm_exec import (
    ExecSystem,
    LogicalQueue,
    SchedulerOptionError,
    always_single_quote,
    batch_directives,
    conditional_quote,
    env_file,
    parse_sbatch_output,
    parse_scheduler_options,
    wrapper_script,
)


@pytest.mark.parametrize(("value", "quoted"), [
    ("plain", "plain"),
    ("/a/b", "/a/b"),
    ("$HOME", "$HOME"),  # not quoted at all: bash expands it
    ("hi there", '"hi there"'),
    ('say "x" now', '"say \\"x\\" now"'),
    ("a;b", '"a;b"'),
    ('"already quoted"', '"already quoted"'),
])
def test_conditional_quote_is_tapis(value, quoted):
    assert conditional_quote(value) == quoted


def test_env_file_as_bash_reads_it(tmp_path):
    env = [("A", "hi there"), ("B", "x=1"), ("EMPTY", ""), ("C", 'q"uote d')]
    path = tmp_path / "tapisjob.env"
    path.write_text(env_file(env))
    assert path.read_text().splitlines()[0] == 'export A="hi there"'
    out = subprocess.run(["bash", "-c", f". {path}; printf '%s|' \"$A\" \"$B\" \"$EMPTY\" "
                                        '"$C"'], capture_output=True, text=True, check=True)
    assert out.stdout == 'hi there|x=1||q"uote d|'


def test_always_single_quote_survives_bash():
    # an already single-quoted value is kept as it is, so bash strips its quotes
    for value, expected in (("a b", "a b"), ("it's", "it's"), ("$(x)", "$(x)"),
                            ("'quoted'", "quoted")):
        out = subprocess.run(["bash", "-c", f"printf %s {always_single_quote(value)}"],
                             capture_output=True, text=True, check=True).stdout
        assert out == expected


def test_scheduler_options_parsing():
    assert parse_scheduler_options(["-A proj", "--comment=x", "--exclusive=user",
                                    "--requeue", "-J my:name"]) == {
        "--account": "proj", "--comment": "x", "--exclusive": "user", "--requeue": "",
        "--job-name": "my-name"}
    for arg, code in (("-N 2", "SUBSUMED"), ("--time 5", "SUBSUMED"), ("-p x", "SUBSUMED"),
                      ("--mem 1", "SUBSUMED"), ("--wrap x", "UNSUPPORTED"),
                      ("--chdir /x", "UNSUPPORTED"), ("nodash", "PARSE")):
        with pytest.raises(SchedulerOptionError) as err:
            parse_scheduler_options([arg])
        assert code in str(err.value)


def test_wrapper_script_lines():
    d = batch_directives({"--account": "proj"}, nodes=2, cores_per_node=3, max_minutes=7,
                         memory_mb=512, partition="debug", stdout_path="/o/tapisjob.out",
                         stderr_path="/o/tapisjob.out")
    assert list(d) == sorted(d)  # TreeMap order
    assert d["--ntasks"] == "6" and d["--job-name"] == "tapisjob.sh" and "--error" not in d
    script = wrapper_script(d, executable="run me.sh", app_args=["'a b'", "$X"],
                            stdout_path="/o/tapisjob.out", stderr_path="/o/tapisjob.out")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "#SBATCH --account proj" in lines and "#SBATCH --time 7" in lines
    assert ". ./tapisjob.env" in lines
    assert lines[-1] == "./'run me.sh' 'a b' $X > '/o/tapisjob.out' 2>&1"
    split = batch_directives({}, nodes=1, cores_per_node=1, max_minutes=1, memory_mb=1,
                             partition="p", stdout_path="/o/out", stderr_path="/o/err")
    assert split["--error"] == "/o/err"


def test_sbatch_output_and_paths():
    assert parse_sbatch_output("banner\nSubmitted batch job 42\n") == "42"
    assert parse_sbatch_output("sbatch: error: x") is None
    system = ExecSystem(id="s", host="h", port=22, effective_user="u", key_file="k",
                        known_hosts="kh", root_dir="/data",
                        queues=(LogicalQueue("q", "p"),))
    assert system.abs_path("a/b") == "/data/a/b" and system.abs_path("/") == "/data"
    assert system.rel_path("/data/a/b") == "a/b"
    with pytest.raises(ValueError):
        system.abs_path("a/../../etc")


def test_search_conditions():
    row = {"uuid": "u1", "name": "train-7", "status": "RUNNING", "tags": ["a", "b"],
           "nodeCount": 2, "ended": None}
    assert _matches(row, "uuid.in", "u0,u1")
    assert not _matches(row, "uuid.nin", "u0,u1")
    assert _matches(row, "name.like", "train-*") and _matches(row, "name.like", "train-!")
    assert not _matches(row, "name.nlike", "*7")
    assert _matches(row, "tags.in", "b,z") and _matches(row, "tags.contains", "a")
    assert not _matches(row, "tags.ncontains", "a")
    assert _matches(row, "nodeCount.gte", "2") and not _matches(row, "nodeCount.gt", "2")
    assert _matches(row, "nodeCount.between", "1,3")
    assert _matches(row, "status.EQ", "RUNNING") and _matches(row, "ended.neq", "x")
    for key in ("nosuch.eq", "name.foo", "tags.eq"):
        with pytest.raises(ApiError):
            _matches(row, key, "x")


def test_archive_filter():
    assert _archive_selected("a.txt", [], [])
    assert not _archive_selected("a.log", [], ["*.log"])
    assert _archive_selected("sub/a.txt", ["*.txt"], [])
    assert not _archive_selected("a.txt", ["*.txt"], ["a.*"])  # excludes win
    assert _archive_selected("x2021.out", ["REGEX:x\\d+\\.out"], [])


@pytest.mark.parametrize(("code", "raw", "expected"), [
    ("PD", 0, ("queued", "PENDING", None, "0:0")),
    ("R", 0, ("active", "R", None, "0:0")),
    ("CG", 0, ("active", "CG", None, "0:0")),
    ("CD", 0, ("done", "COMPLETED", None, "0:0")),
    ("F", 768, ("failed", "FAILED", "SCHEDULER_TERMINATED", "3:0")),
    ("TO", 15, ("failed", "TIMEOUT", "SCHEDULER_TIMEOUT", "0:15")),
    ("CA", 9, ("failed", "CANCELLED", "SCHEDULER_CANCELLED", "0:9")),
    ("OOM", 0, ("failed", "OUT_OF_MEMORY", "SCHEDULER_OUT_OF_MEMORY", "0:0")),
    ("NF", 0, ("failed", "NODE_FAIL", "SCHEDULER_TERMINATED", "0:0")),
])
def test_slurm_states_map_like_slurm_status_type(code, raw, expected):
    assert interpret_squeue(code, raw) == expected
