"""`%serve job ...` in a real IPython shell, on a real embedded facade; the tests marked `model`
run real batch jobs on SmolLM2 (llama.cpp). Nothing reads the model's words: what is checked is
what the code controls (states, counts, custom_ids, displays)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.testing import globalipapp
from IPython.utils.capture import capture_output

from facade_fixtures import facade_fixture
from hpcserve_jupyter import jobviews, views
from hpcserve_jupyter.magics.core import magics_of
from hpcserve_jupyter.magics.jobs import JobNote

RECIPE = "smollm2-135m"

hp = facade_fixture(scope="module")


@pytest.fixture
def ip(hp):
    """The test IPython shell with the extension loaded, on this module's facade, terminal mode."""
    globalipapp.start_ipython()
    shell = globalipapp.get_ipython()
    assert shell.run_cell("%load_ext hpcserve_jupyter").success
    magics = magics_of(shell)
    magics.facade, magics.rich, magics.current = hp, False, None
    yield shell
    magics.rich = False
    for var in ("df", "rows"):
        shell.user_ns.pop(var, None)


def batch_file(path: Path, n: int, max_tokens: int) -> Path:
    """An OpenAI Batch file of `n` chat requests with custom_ids q0..q{n-1}."""
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"messages": [{"role": "user", "content": f"Count to {i}."}],
                       "max_tokens": max_tokens, "temperature": 0}} for i in range(n)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def run(shell, source: str):
    return shell.run_cell(source)


# --------------------------------------------------------------------------- the commands


def test_job_commands_are_in_the_help(ip):
    assert "job" in run(ip, "%serve help").result.text()
    text = run(ip, "%serve help job").result.text()
    for command in ("submit", "status", "results", "logs", "cancel"):
        assert command in text
    submit = run(ip, "%serve job submit --help")
    assert submit.error_in_exec is None  # help printed, no result, no error


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("line,words", [
    ("%serve job", "JOB_COMMAND"),                                       # no job command
    ("%serve job frobnicate", "invalid choice"),                         # unknown command
    (f"%serve job submit {RECIPE}", "--input"),                          # missing --input
    (f"%serve job submit {RECIPE} --input x.jsonl --frob", "unrecognized arguments"),
    (f"%serve job submit {RECIPE} --input x.jsonl -c 0", "integer >= 1"),
    (f"%serve job submit {RECIPE} --input x.jsonl --wait --timeout -3", "seconds > 0"),
    ("%serve job results", "id"),                                        # missing ID
    ("%serve job results some-job -o 1x", "not a Python variable name"),
    ("%serve job results some-job -o class", "not a Python variable name"),
    ("%serve job logs some-job --tail many", "invalid count_arg value"),
])
def test_bad_input_is_a_short_usage_error(ip, capsys, line, words):
    result = run(ip, line)
    err = capsys.readouterr().err
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert words in str(result.error_in_exec)
    assert "Traceback" not in err


def test_bad_overrides_are_a_message_with_a_hint(ip, hp, capsys, tmp_path):
    """--set under the name of a submit option would reach submit_job twice (a TypeError
    traceback): refused with the option to use instead."""
    path = batch_file(tmp_path / "in.jsonl", 2, 4)
    before = len(hp.jobs())
    for pair, option in [("concurrency=3", "--concurrency"), ("output=x", "--output"),
                         ("wait=1", "--wait")]:
        result = run(ip, f"%serve job submit {RECIPE} --input {path} --set {pair}")
        err = capsys.readouterr().err
        assert result.error_in_exec is None and result.result is None
        assert f"unknown override '{pair.split('=')[0]}'" in err and f"use {option}" in err
        assert "Traceback" not in err
    result = run(ip, f"%serve job submit {RECIPE} --input {path} --set nonsense")
    assert "--set expects KEY=VALUE" in capsys.readouterr().err
    assert len(hp.jobs()) == before  # nothing was submitted


def test_a_malformed_file_is_refused_with_its_line_numbers(ip, hp, capsys, tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"messages": [{"role": "user", "content": "hi"}]}})
    path.write_text(good + "\nnot json\n" + good + "\n")  # line 3 repeats custom_id "a"
    before = len(hp.jobs())
    result = run(ip, f"%serve job submit {RECIPE} --input {path} --wait")
    err = capsys.readouterr().err
    assert result.error_in_exec is None and result.result is None
    assert err.startswith(f"hpcserve: input file {path} has 2 problem(s), nothing was run")
    assert "line 2: not valid JSON" in err and "line 3:" in err and "hint:" in err
    assert "Traceback" not in err
    assert len(hp.jobs()) == before


def test_missing_input_and_unknown_jobs_print_a_message(ip, capsys, tmp_path):
    result = run(ip, f"%serve job submit {RECIPE} --input {tmp_path}/nope.jsonl")
    err = capsys.readouterr().err
    assert result.result is None and "does not exist" in err and "Traceback" not in err
    for command in ("status", "results", "logs", "cancel"):
        result = run(ip, f"%serve job {command} no-such-job")
        err = capsys.readouterr().err
        assert result.error_in_exec is None and result.result is None
        assert err.startswith("hpcserve: no job 'no-such-job'"), (command, err)
        assert "Traceback" not in err
    result = run(ip, f"%serve job submit no-such-recipe --input {tmp_path}/x.jsonl")
    assert "unknown recipe 'no-such-recipe'" in capsys.readouterr().err


def test_status_lists_no_jobs_yet(ip, hp):
    listed = run(ip, "%serve job status").result
    assert isinstance(listed, jobviews.JobList)
    assert [j.id for j in listed] == [j.id for j in hp.jobs(live_only=True)]
    if not listed:
        assert "no live jobs" in listed.text() and "--all" in listed.text()


# --------------------------------------------------------------------------- with the model


@pytest.mark.model
def test_submit_wait_then_results_into_a_variable(ip, hp, capsys, tmp_path):
    path = batch_file(tmp_path / "three.jsonl", 3, 4)
    result = run(ip, f"%serve job submit {RECIPE} --input {path} --concurrency 2 --wait")
    out = capsys.readouterr().out
    listed = result.result
    assert isinstance(listed, jobviews.JobList) and len(listed) == 1
    job = listed[0]
    assert (str(job.state), job.total, job.done, job.failed) == ("done", 3, 3, 0)
    assert hp.job_status(job.id).state == "done"
    # progress lines in a terminal: the header, then the job's state and counts as they change
    assert out.startswith(f"submitted {job.name} (id {job.id}): 3 requests on local\n")
    assert f"{job.name}: done 3/3 (100%)" in out
    assert "<progress" in listed._repr_html_()

    note = run(ip, f"%serve job results {job.id} -o df").result
    assert isinstance(note, JobNote) and note.text().startswith(f"{job.name}: 3 results in df")
    df = ip.user_ns["df"]
    assert len(df) == 3 and sorted(df["custom_id"]) == ["q0", "q1", "q2"]
    assert df["error"].isna().all() and (df["status_code"] == 200).all()
    assert all(u["completion_tokens"] <= 4 for u in df["usage"])
    again = run(ip, f"%serve job results {job.name}").result  # no -o: the cell's value
    assert list(again["custom_id"]) == list(df["custom_id"])

    detail = run(ip, f"%serve job status {job.id}").result  # ended: shown, not followed
    assert isinstance(detail, jobviews.JobDetail) and "done" in detail.text()
    assert job.id not in [j.id for j in run(ip, "%serve job status").result]
    assert job.id in [j.id for j in run(ip, "%serve job status --all").result]
    logs = run(ip, f"%serve job logs {job.id} --tail 0").result
    assert isinstance(logs, views.Text) and logs.text().strip()
    cancelled = run(ip, f"%serve job cancel {job.id}").result  # ended: stays done
    assert isinstance(cancelled, JobNote) and cancelled.text().startswith(f"{job.name}: done")


@pytest.mark.model
def test_notebook_mode_follows_a_job_in_one_updating_display(ip, hp, tmp_path):
    """In a notebook `%serve job status ID` is a progress bar (a display updated in place by
    display_id) until the job ends; it ends as it began, and the outcome is the cell's result."""
    magics_of(ip).rich = True
    path = batch_file(tmp_path / "three.jsonl", 3, 4)
    note = run(ip, f"%serve job submit {RECIPE} --input {path}").result
    assert isinstance(note, JobNote) and f"%serve job status {note.job.name}" in note.text()
    job = note.job
    with capture_output() as cap:
        result = run(ip, f"%serve job status {job.id}")
    listed = result.result
    assert isinstance(listed, jobviews.JobList) and str(listed[0].state) == "done"
    first, updates = cap.outputs[0], cap.outputs[1:]
    assert first.data["text/plain"] == f"following {job.name} (id {job.id})"
    assert updates and all(o.update for o in updates)
    assert {o.transient["display_id"] for o in updates} == {first.transient["display_id"]}
    bars = [o.data["text/html"] for o in updates[:-1]]
    assert bars and all('<progress class="hpcserve-job-progress"' in b for b in bars)
    assert any(o.data["text/plain"].startswith(f"{job.name}: done 3/3") for o in updates)
    assert updates[-1].data == first.data


@pytest.mark.model
def test_following_is_interruptible_and_cancel_keeps_the_output(ip, hp, capsys, tmp_path,
                                                                monkeypatch):
    """Ctrl-C (a real SIGINT, sent once the follow has its first progress report) stops
    following, not the job; `%serve job cancel` then cancels it with its output kept."""
    path = batch_file(tmp_path / "long.jsonl", 100, 64)
    job = hp.submit_job(RECIPE, path, concurrency=1).job
    now = run(ip, f"%serve job status {job.name} --once").result  # live, not followed
    assert isinstance(now, jobviews.JobDetail) and now.job.id == job.id and now.job.state.live
    real_wait = hp.wait_job
    interrupted: list[int] = []

    def wait_then_interrupt(key, *, timeout=None, progress=None):
        def report(j):
            progress(j)
            if j.state == "running" and j.done >= 1 and not interrupted:
                interrupted.append(j.done)
                os.kill(os.getpid(), signal.SIGINT)  # once: the cell's thread gets it
        return real_wait(key, timeout=timeout, progress=report)

    monkeypatch.setattr(hp, "wait_job", wait_then_interrupt)
    result = run(ip, f"%serve job status {job.id}")
    err = capsys.readouterr().err
    assert result.error_in_exec is None and result.result is None
    assert f"stopped following; job {job.name} goes on" in err
    assert f"`%serve job cancel {job.name}`" in err and "Traceback" not in err
    assert hp.job_status(job.id).state.live

    note = run(ip, f"%serve job cancel {job.name}").result
    assert isinstance(note, JobNote) and note.text().startswith(f"{job.name}: cancelled")
    ended = hp.job_status(job.id)
    assert ended.state == "cancelled" and 1 <= ended.done < 100
    rows = run(ip, f"%serve job results {job.id} -o rows")
    assert rows.error_in_exec is None
    kept = ip.user_ns["rows"]
    assert interrupted and 1 <= len(kept) < 100
    assert set(kept["custom_id"]) <= {f"q{i}" for i in range(100)}


@pytest.mark.model
def test_a_task_job_gives_its_output_directory(ip, hp, capsys, tmp_path):
    """A task recipe (embed-files: one JSON per input file): results are its output
    directory, stored with -o like a batch job's table."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("first file")
    (docs / "b.txt").write_text("second file")
    result = run(ip, f"%serve job submit embed-files --input {docs} --wait")
    out = capsys.readouterr().out
    (job,) = result.result
    assert str(job.state) == "done" and (job.kind, job.total, job.done) == ("task", 2, 2)
    assert f"(id {job.id}): a task over 2 input files on local" in out
    note = run(ip, f"%serve job results {job.id} -o df").result
    assert note.text().startswith(f"{job.name}: output directory ")
    outdir = ip.user_ns["df"]
    assert isinstance(outdir, Path) and outdir.is_dir()
    assert sorted(p.name for p in outdir.iterdir()) == ["a.txt.json", "b.txt.json"]
