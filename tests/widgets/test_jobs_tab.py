"""The control panel's Jobs tab through ipywidgets' Python-side models (set `.value`, `.click()`,
assert the widgets' state), on a real embedded facade; the tests marked `model` run real batch
jobs on SmolLM2 (llama.cpp). The table follows the facade's events only (the tab never polls),
so a job submitted outside the panel reaching `done` in the table shows the events work."""

from __future__ import annotations

import html
import json
from pathlib import Path

import ipywidgets as W
import pytest

from facade_fixtures import facade_fixture
from hpcserve_jupyter.widgets import ControlPanel

RECIPE = "smollm2-135m"

hp = facade_fixture()


def batch_file(path: Path, n: int, max_tokens: int) -> Path:
    """An OpenAI Batch file of `n` chat requests with custom_ids q0..q{n-1}."""
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"messages": [{"role": "user", "content": f"Count to {i}."}],
                       "max_tokens": max_tokens, "temperature": 0}} for i in range(n)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def shown(line: W.HTML) -> str:
    """A status line's text as the browser shows it."""
    return html.unescape(line.value)


# --------------------------------------------------------------------------- the form


def test_jobs_is_a_tab_with_a_submit_form(panel, hp):
    assert panel.tabs.titles[-1] == "Jobs"
    assert panel.tabs.children[-1] is panel.jobs.box
    form = panel.jobs.form
    runnable = sorted(r["name"] for r in hp.recipes()
                      if r["category"] in ("inference", "embedding", "task"))
    assert list(form.recipe.options) == runnable
    assert "embed-files" in runnable and "chroma" not in runnable  # a task, a vector db
    assert form.recipe.value == RECIPE  # an inference recipe that runs here (no GPU)
    assert form.target.options == ("local",) and form.target.value == "local"
    assert isinstance(form.concurrency, W.BoundedIntText) and form.concurrency.value == 8
    assert panel.jobs.rows == {} and panel.jobs.table_text() == ""


def test_a_bad_submit_shows_its_error_and_submits_nothing(panel, hp, tmp_path):
    form = panel.jobs.form
    form.submit_button.click()  # no input path
    assert "give the input file's path" in shown(form.status) and panel.errors

    form.input.value = str(tmp_path / "missing.jsonl")
    form.submit_button.click()
    assert panel.join(30)
    assert "does not exist" in shown(form.status) and "#c62828" in form.status.value
    assert not form.submit_button.disabled

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "a"}\nnot json\n')
    form.input.value = str(bad)
    form.submit_button.click()
    assert panel.join(30)
    assert "2 problem(s)" in shown(form.status) and "line 2: not valid JSON" in shown(form.status)
    assert "Traceback" not in form.status.value
    assert len(panel.errors) == 3
    assert hp.jobs() == [] and form.submitted == [] and panel.jobs.rows == {}


def test_a_target_the_facade_refuses_is_a_message(hp, tmp_path):
    """A target the facade refuses (one removed from the targets file since the panel opened):
    the form shows the facade's error."""
    path = batch_file(tmp_path / "in.jsonl", 2, 4)
    panel = ControlPanel(hp)
    try:
        panel.jobs.form.input.value = str(path)
        panel.jobs.form.target.options = ("nowhere",)
        panel.jobs.form.submit_button.click()
        assert panel.join(30)
        assert "unknown target 'nowhere'" in shown(panel.jobs.form.status)
    finally:
        panel.close()


# --------------------------------------------------------------------------- with the model


@pytest.mark.model
def test_a_submitted_job_shows_its_progress_until_done_then_results(panel, hp, tmp_path):
    path = batch_file(tmp_path / "three.jsonl", 3, 4)
    form = panel.jobs.form
    form.input.value, form.concurrency.value = str(path), 2
    form.submit_button.click()
    assert panel.join(60)
    (jid,) = form.submitted
    job = hp.job_status(jid)
    assert f"submitted {job.name} (id {jid}): 3 requests on local" in shown(form.status)
    assert panel.wait_for(lambda p: p.jobs.state_of(jid) == "done", 60)
    row = panel.jobs.rows[jid]
    assert isinstance(row.progress, W.IntProgress)
    assert row.progress.max == 3 and row.progress.value == 3
    assert row.progress.bar_style == "success" and row.counts.value == "3/3"
    assert row.failed.value == "0" and row.eta.value == "0s"
    assert "hpcserve-done" in row.state.value and row.cancel_button.disabled
    assert panel.jobs.table_text() == f"{job.name}  done  3/3  0"
    assert hp.job_status(jid).state == "done"

    row.results_button.click()
    assert panel.join(60)
    results = panel.jobs.results
    assert panel.jobs.results_job == jid
    assert sorted(results["custom_id"]) == ["q0", "q1", "q2"]
    assert results["error"].isna().all()
    assert "3 results loaded" in shown(panel.jobs.status)
    view = panel.jobs.results_view.value
    assert view.startswith(f"<b>{job.name}</b>: 3 results")
    assert all(f"<td>q{i}</td>" in view for i in range(3))


@pytest.mark.model
def test_jobs_submitted_elsewhere_follow_events_and_cancel_cancels(panel, hp, tmp_path):
    """A job submitted outside the panel (another cell) appears and moves through its states
    by the facade's events alone; its row's cancel button cancels it, output kept."""
    path = batch_file(tmp_path / "long.jsonl", 100, 64)
    job = hp.submit_job(RECIPE, path, concurrency=1).job
    assert panel.wait_for(lambda p: p.jobs.state_of(job.id) is not None, 10)
    row = panel.jobs.rows[job.id]
    assert not row.cancel_button.disabled
    assert panel.wait_for(lambda p: p.jobs.rows[job.id].progress.value >= 1, 120)
    assert row.progress.max == 100 and row.state_name == "running"
    assert row.progress.bar_style == "info"

    row.cancel_button.click()
    assert row.cancel_button.disabled
    assert panel.join(60)
    assert panel.wait_for(lambda p: p.jobs.state_of(job.id) == "cancelled", 30)
    ended = hp.job_status(job.id)
    assert ended.state == "cancelled" and 1 <= ended.done < 100
    assert row.progress.value == ended.done and row.progress.bar_style == "warning"
    assert f"{job.name}: cancelled" in shown(panel.jobs.status)
    assert row.cancel_button.disabled

    # a new panel lists the ended job (read once when it opens), not only live ones
    other = ControlPanel(hp)
    try:
        assert other.jobs.state_of(job.id) == "cancelled"
    finally:
        other.close()


@pytest.mark.model
def test_a_task_jobs_results_are_its_output_files(panel, hp, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("first file")
    form = panel.jobs.form
    form.recipe.value, form.input.value = "embed-files", str(docs)
    form.submit_button.click()
    assert panel.join(60)
    (jid,) = form.submitted
    assert "a task over 1 input file on local" in shown(form.status)
    assert panel.wait_for(lambda p: p.jobs.state_of(jid) == "done", 120)
    row = panel.jobs.rows[jid]
    assert (row.progress.value, row.progress.max) == (1, 1)
    row.results_button.click()
    assert panel.join(60)
    assert isinstance(panel.jobs.results, Path) and panel.jobs.results.is_dir()
    assert "1 file in" in panel.jobs.results_view.value
    assert "a.txt.json" in panel.jobs.results_view.value
