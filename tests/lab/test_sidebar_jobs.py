"""The sidebar's Jobs section, end to end: real `jupyter lab`, real Chromium, real llama.cpp
engine on the shipped SmolLM2 model.

A small batch job submitted through the REST API appears in the AI Sessions sidebar by itself
(the event stream), its progress bar fills to its total with the line the engine rejects
counted as failed, it ends `done`, and its results download through the row's button (with the
extension's token headers) equal to what the server holds. After a reload the ended job is
still listed (read with GET /jobs: the stream's snapshot holds live jobs only). A long job is
listed above it while live; Cancel asks first ("Keep running" leaves it running), then the row
goes `cancelled` with its partial output kept. Screenshots go to tests/lab/artifacts/.

Nothing here reads a model's wording: the assertions are on ids, counts, states and files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from job_inputs import chat_lines, write

from .conftest import LabServer, open_sidebar, run_page

pytestmark = [pytest.mark.lab, pytest.mark.model, pytest.mark.timeout(600)]

RECIPE = "smollm2-135m"

# Records every state and progress value each job row shows (a MutationObserver), and marks
# the page to detect reloads.
WATCH_JOBS = """
() => {
  window.__hpcserveNoReload = true;
  window.__jobStates = {};
  window.__jobProgress = {};
  const push = (store, id, value) => {
    const seen = (store[id] ||= []);
    if (seen[seen.length - 1] !== value) seen.push(value);
  };
  const record = () => {
    for (const li of document.querySelectorAll('li.jp-hpcserve-job')) {
      push(window.__jobStates, li.dataset.jobId, li.dataset.state);
      const bar = li.querySelector('.jp-hpcserve-progress');
      push(window.__jobProgress, li.dataset.jobId, Number(bar.getAttribute('aria-valuenow')));
    }
  };
  new MutationObserver(record).observe(document.body, {
    subtree: true, childList: true, attributes: true,
    attributeFilter: ['data-state', 'aria-valuenow']});
  record();
}
"""


def submit(lab: LabServer, body: dict) -> dict:
    r = lab.http.post("hpcserve/api/jobs", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def cancel_live_jobs(lab: LabServer) -> None:
    """Leave no engine running, whatever the test did."""
    for job in lab.http.get("hpcserve/api/jobs", params={"live": 1}).json()["jobs"]:
        lab.http.delete(f"hpcserve/api/jobs/{job['id']}")


def test_sidebar_jobs(lab: LabServer, browser_context, artifacts: Path) -> None:
    run_page(lab, browser_context, artifacts, "jobs",
             lambda page, expect: _run(page, lab, artifacts, expect),
             cleanup=lambda: cancel_live_jobs(lab))


def _run(page, lab: LabServer, artifacts: Path, expect) -> None:
    page.goto(lab.lab_url("lab"))
    page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
    sidebar = open_sidebar(page, expect)
    jobs = sidebar.locator(".jp-hpcserve-jobs")
    expect(jobs.locator("h3")).to_have_text("Jobs")
    expect(jobs.locator(".jp-hpcserve-jobs-empty")).to_contain_text("No jobs")
    # the sessions part is unchanged by the jobs beside it
    expect(sidebar.locator(".jp-hpcserve-empty")).to_contain_text("No sessions")
    page.evaluate(WATCH_JOBS)

    # -- a small job, submitted through the REST API; line 3 is well formed for the file but
    # rejected by the engine, so it is answered with an error and counted as failed
    small = chat_lines(6, max_tokens=8, prefix="s")
    small[3]["body"] = {"messages": 5}
    write(lab.root / "small.jsonl", small)
    job = submit(lab, {"recipe": RECIPE, "input": "small.jsonl", "concurrency": 2,
                       "name": "ui-small"})
    jid = job["id"]
    assert job["total"] == 6, job

    row = jobs.locator(f"li.jp-hpcserve-job[data-job-id='{jid}']")
    expect(row).to_be_visible(timeout=30_000)
    expect(row.locator(".jp-hpcserve-job-name")).to_have_text("ui-small")
    expect(row.locator(".jp-hpcserve-job-meta")).to_contain_text(
        f"batch · {RECIPE} · llama-cpp · local")
    bar = row.locator(".jp-hpcserve-progress")
    expect(bar).to_have_attribute("aria-valuemax", "6")

    expect(row).to_have_attribute("data-state", "done", timeout=240_000)
    expect(row.locator(".jp-hpcserve-badge")).to_have_text("done")
    expect(bar).to_have_attribute("aria-valuenow", "6")
    expect(bar).to_have_attribute("data-failed", "1")
    expect(row.locator(".jp-hpcserve-job-counts")).to_have_text("6 / 6 · 1 failed")
    expect(row.locator(".jp-hpcserve-job-time")).to_have_text(re.compile(r"^ran \d+[smhd]"))
    # the bar is drawn: 5 answered of 6 in the answered colour, 1 in the failed one
    widths = bar.evaluate(
        "b => [b.querySelector('.jp-hpcserve-progress-ok').style.width,"
        " b.querySelector('.jp-hpcserve-progress-failed').style.width]")
    shares = [float(w.rstrip("%")) for w in widths]
    assert shares == pytest.approx([500 / 6, 100 / 6], abs=0.01), widths
    expect(row.locator("button[data-action=cancel-job]")).to_have_count(0)
    server = lab.http.get(f"hpcserve/api/jobs/{jid}").json()
    assert (server["state"], server["done"], server["failed"]) == ("done", 6, 1), server

    # what the row showed came from the event stream, live, without a reload
    states = page.evaluate("() => window.__jobStates")[jid]
    progress = page.evaluate("() => window.__jobProgress")[jid]
    assert states[-1] == "done" and len(states) >= 2, states
    assert set(states[:-1]) <= {"pending", "starting", "running"}, states
    assert progress == sorted(progress) and progress[-1] == 6, progress
    assert page.evaluate("() => window.__hpcserveNoReload === true")
    page.screenshot(path=str(artifacts / "jobs-01-done.png"))

    # -- download the results: the same lines the server holds, one per input line
    with page.expect_download(timeout=30_000) as info:
        row.locator("button[data-action=download-results]").click()
    download = info.value
    assert download.suggested_filename == "ui-small.jsonl"
    text = Path(download.path()).read_text()
    assert text == lab.http.get(f"hpcserve/api/jobs/{jid}/results").text
    out = [json.loads(x) for x in text.splitlines()]
    assert sorted(x["custom_id"] for x in out) == sorted(x["custom_id"] for x in small)
    by_id = {x["custom_id"]: x for x in out}
    assert by_id["s3"]["error"] and by_id["s3"]["response"]["status_code"] >= 400
    assert all(x["response"]["status_code"] == 200 for c, x in by_id.items() if c != "s3")

    # -- after a reload the ended job is still listed (GET /jobs, not the live snapshot)
    page.reload()
    page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
    sidebar = open_sidebar(page, expect)
    jobs = sidebar.locator(".jp-hpcserve-jobs")
    row = jobs.locator(f"li.jp-hpcserve-job[data-job-id='{jid}']")
    expect(row).to_have_attribute("data-state", "done", timeout=30_000)
    expect(row.locator(".jp-hpcserve-job-counts")).to_have_text("6 / 6 · 1 failed")
    page.evaluate(WATCH_JOBS)

    # -- a long job (100 lines, 64 tokens each, one at a time), cancelled from the sidebar
    write(lab.root / "long.jsonl", chat_lines(100, max_tokens=64, prefix="l"))
    long_job = submit(lab, {"recipe": RECIPE, "input": "long.jsonl", "concurrency": 1,
                            "name": "ui-long"})
    lid = long_job["id"]
    long_row = jobs.locator(f"li.jp-hpcserve-job[data-job-id='{lid}']")
    expect(long_row).to_be_visible(timeout=30_000)
    # live jobs are listed first, above the ended one
    expect(jobs.locator("li.jp-hpcserve-job").first).to_have_attribute("data-job-id", lid)
    expect(jobs.locator(".jp-hpcserve-jobs-count")).to_have_text("1 live")
    long_bar = long_row.locator(".jp-hpcserve-progress")
    expect(long_bar).to_have_attribute("aria-valuemax", "100")
    # running with some answers written, so there is a partial output to keep
    expect(long_row).to_have_attribute("data-state", "running", timeout=120_000)
    expect(long_bar).to_have_attribute("aria-valuenow", re.compile(r"^[1-9]\d*$"),
                                       timeout=120_000)
    expect(long_row.locator(".jp-hpcserve-job-eta")).to_have_text(re.compile(r"^ETA \d+[smhd]"))
    expect(long_row.locator("button[data-action=download-results]")).to_have_count(0)
    page.screenshot(path=str(artifacts / "jobs-02-running.png"))

    # Cancel asks first: "Keep running" leaves the job alone
    cancel = long_row.locator("button[data-action=cancel-job]")
    cancel.click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("Cancel ui-long?")
    expect(dialog).to_contain_text("of 100 answers written so far are kept")
    page.screenshot(path=str(artifacts / "jobs-03-cancel-confirm.png"))
    dialog.locator("button.jp-mod-reject").click()
    expect(dialog).to_have_count(0)
    assert lab.http.get(f"hpcserve/api/jobs/{lid}").json()["state"] == "running"
    expect(long_row).to_have_attribute("data-state", "running")

    # confirmed: the row goes cancelled, the Cancel button goes, the partial output stays
    cancel.click()
    expect(dialog).to_contain_text("Cancel ui-long?")
    dialog.locator("button.jp-mod-accept").click()
    expect(long_row).to_have_attribute("data-state", "cancelled", timeout=60_000)
    expect(long_row.locator(".jp-hpcserve-badge")).to_have_text("cancelled")
    expect(long_row.locator("button[data-action=cancel-job]")).to_have_count(0)
    server = lab.http.get(f"hpcserve/api/jobs/{lid}").json()
    assert server["state"] == "cancelled" and 0 < server["done"] < 100, server
    expect(long_bar).to_have_attribute("aria-valuenow", str(server["done"]))
    expect(long_row.locator(".jp-hpcserve-job-counts")).to_have_text(f"{server['done']} / 100")
    expect(long_row.locator("button[data-action=download-results]")).to_have_count(1)
    states = page.evaluate("() => window.__jobStates")[lid]
    assert states[-1] == "cancelled" and "running" in states, states
    assert page.evaluate("() => window.__hpcserveNoReload === true")
    page.screenshot(path=str(artifacts / "jobs-04-cancelled.png"))

    # -- clearing ended jobs empties the list (both have ended)
    expect(jobs.locator(".jp-hpcserve-jobs-count")).to_have_text("")
    jobs.locator("button[data-action=clear-ended-jobs]").click()
    expect(jobs.locator("li.jp-hpcserve-job")).to_have_count(0)
    expect(jobs.locator(".jp-hpcserve-jobs-empty")).to_contain_text("No jobs")
