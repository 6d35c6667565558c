"""The sidebar's time left, warnings, relaunch, extend and sparkline (issue 18), end to end:
real `jupyter lab`, real Chromium, real llama.cpp engine on the shipped SmolLM2 model.

A session launched with a 9-minute max lifetime (under the 10-minute warning) shows a countdown
that runs and is amber, and the server's `expiring` event as a notification with Extend and
Relaunch; the row's Relaunch makes a new row with the same settings; Extend (a dialog) takes
the new one out of the amber. A llama-cpp session's row says it has no metrics (that server has
no Prometheus endpoint); a llama-server session's row draws its sparkline. Nothing here reads a
model's wording. Screenshots go to tests/lab/artifacts/.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

import llama_server_recipe

from .conftest import TOKEN, LabServer, open_sidebar, require_labextension, run_page

pytestmark = [pytest.mark.lab, pytest.mark.model, pytest.mark.timeout(600)]

RECIPE = "smollm2-135m"
EXPIRING_S = 600  # the sidebar's amber threshold and the server's default warning


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    """conftest's server, with the llama-server recipe among the user's recipes (read when
    the server starts) when that engine is built, and health probes of ready sessions every
    second (R14's setting) so a hung engine is seen soon."""
    require_labextension()
    tmp = tmp_path_factory.mktemp("lab")
    (tmp / "config").mkdir()
    (tmp / "config" / "jupyter_server_config.json").write_text(json.dumps(
        {"HpcserveApp": {"health_interval": 1.0, "health_failures": 2}}))
    if llama_server_recipe.built():
        llama_server_recipe.write_recipe(tmp / "home" / ".config" / "hpcserve" / "recipes")
    server = LabServer(tmp)
    try:
        yield server
    finally:
        server.close()


def launch(lab: LabServer, recipe: str = RECIPE, **overrides: str) -> dict:
    r = lab.http.post("hpcserve/api/sessions",
                      json={"recipe": recipe, "target": "local", "overrides": overrides})
    assert r.status_code == 201, r.text
    return r.json()


def open_lab_sidebar(page, lab: LabServer, expect):
    page.goto(lab.lab_url() + "&reset")  # a fresh layout: an earlier page's has it open
    page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
    return open_sidebar(page, expect)


def left_s(row) -> int:
    return int(row.locator(".jp-hpcserve-session-left").get_attribute("data-left-s"))


def test_countdown_warning_relaunch_extend(lab: LabServer, browser_context,
                                           artifacts: Path) -> None:
    def body(page, expect) -> None:
        sidebar = open_lab_sidebar(page, lab, expect)
        session = launch(lab, max_lifetime="9m")
        sid, name = session["id"], session["name"]
        row = sidebar.locator(f"li.jp-hpcserve-session[data-session-id='{sid}']")
        expect(row).to_have_attribute("data-state", "ready", timeout=180_000)

        # -- the countdown: shown, amber (under ten minutes), and running in the page
        left = row.locator(".jp-hpcserve-session-left")
        expect(left).to_be_visible()
        expect(left).to_have_class(re.compile(r"\bjp-hpcserve-expiring\b"))
        expect(left).to_have_text(re.compile(r"^\d+m \d\ds left$|^\d+s left$"))
        first = left_s(row)
        assert 0 < first <= 9 * 60, first
        page.wait_for_function(
            "([sel, v]) => Number(document.querySelector(sel)?.dataset.leftS) < v",
            arg=[f"li[data-session-id='{sid}'] .jp-hpcserve-session-left", first],
            timeout=15_000)
        # the page counts down from what the server said (a tick and a fetch apart at most)
        server = lab.http.get(f"hpcserve/api/sessions/{sid}").json()
        assert server["time_limit_s"] == 540 and server["ends_at"]
        assert abs(server["time_left_s"] - left_s(row)) <= 10, (server, left_s(row))

        # -- the server's `expiring` event is a notification with the actions to carry on
        toast = page.locator(".Toastify__toast--warning").filter(has_text=f"{name}:")
        expect(toast.first).to_be_visible(timeout=30_000)
        expect(toast.first.locator("button", has_text="Extend")).to_have_count(1)
        expect(toast.first.locator("button", has_text="Relaunch")).to_have_count(1)
        kinds = [e["kind"] for e in lab.http.get(
            "hpcserve/api/events/log", params={"session": sid}).json()["events"]]
        assert kinds.count("expiring") == 1, kinds
        # llama-cpp has no Prometheus endpoint: the visible sidebar asked, and says so
        metrics = row.locator(".jp-hpcserve-metrics")
        expect(metrics).to_have_attribute("data-available", "false", timeout=30_000)
        expect(metrics.locator("svg")).to_have_count(0)
        reason = lab.http.get(f"hpcserve/api/sessions/{sid}/metrics").json()["reason"]
        assert reason and metrics.get_attribute("title") == reason
        page.screenshot(path=str(artifacts / "time-01-expiring.png"))

        # -- Relaunch (the row's action): a new row, same recipe/backend/target/overrides
        rows = sidebar.locator("li.jp-hpcserve-session")
        expect(rows).to_have_count(1)
        row.locator("button[data-action=relaunch]").click()
        expect(rows).to_have_count(2, timeout=30_000)
        new_sid = next(i for i in (rows.nth(0).get_attribute("data-session-id"),
                                   rows.nth(1).get_attribute("data-session-id")) if i != sid)
        new = lab.http.get(f"hpcserve/api/sessions/{new_sid}").json()
        assert (new["recipe"], new["backend"], new["target"]) == (
            session["recipe"], session["backend"], session["target"])
        assert new["max_lifetime_s"] == 540 and new["name"] != name
        new_row = sidebar.locator(f"li.jp-hpcserve-session[data-session-id='{new_sid}']")
        expect(new_row.locator(".jp-hpcserve-session-name")).to_have_text(new["name"])
        expect(new_row.locator(".jp-hpcserve-session-meta")).to_have_text(
            row.locator(".jp-hpcserve-session-meta").inner_text())
        expect(new_row).to_have_attribute("data-state", "ready", timeout=180_000)
        new_left = new_row.locator(".jp-hpcserve-session-left")
        expect(new_left).to_have_class(re.compile(r"\bjp-hpcserve-expiring\b"))

        # -- Extend (asks for a duration): the server's answer, and no more amber
        new_row.locator("button[data-action=extend]").click()
        dialog = page.locator(".jp-Dialog")
        expect(dialog).to_contain_text(f"Extend {new['name']}")
        dialog.locator("input").fill("1h")
        dialog.locator("button.jp-mod-accept").click()
        expect(dialog).to_have_count(0)
        expect(page.locator(".Toastify__toast--success").filter(
            has_text=f"{new['name']}:")).to_be_visible(timeout=30_000)
        expect(new_left).not_to_have_class(re.compile(r"\bjp-hpcserve-expiring\b"),
                                           timeout=10_000)
        assert left_s(new_row) >= EXPIRING_S
        assert lab.http.get(f"hpcserve/api/sessions/{new_sid}").json()["max_lifetime_s"] == \
            540 + 3600
        page.screenshot(path=str(artifacts / "time-02-relaunched-extended.png"))

        # -- an ended session keeps Relaunch (and loses Extend and its countdown)
        lab.http.delete(f"hpcserve/api/sessions/{sid}").raise_for_status()
        expect(row).to_have_attribute("data-state", "stopped", timeout=60_000)
        expect(row.locator("button[data-action=relaunch]")).to_have_count(1)
        expect(row.locator("button[data-action=extend]")).to_have_count(0)
        expect(left).to_be_hidden()

    run_page(lab, browser_context, artifacts, "time", body)


def engine_process(sid: str) -> psutil.Process:
    """The engine of a local session (`python -m llama_cpp.server`), found by the session mark
    the local target puts in its processes' environment."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if (proc.environ().get("HPCSERVE_SESSION_ID") == sid
                    and proc.cmdline()[1:3] == ["-m", "llama_cpp.server"]):
                found.append(proc)
    assert len(found) == 1, found
    return found[0]


def test_a_hung_engine_is_shown_degraded(lab: LabServer, browser_context,
                                         artifacts: Path) -> None:
    """SIGSTOP the engine: the row's badge says `degraded` (the reason in its tooltip) and a
    warning offers its log; SIGCONT: the badge is plain `ready` again."""

    def body(page, expect) -> None:
        sidebar = open_lab_sidebar(page, lab, expect)
        session = launch(lab)
        sid = session["id"]
        row = sidebar.locator(f"li.jp-hpcserve-session[data-session-id='{sid}']")
        expect(row).to_have_attribute("data-state", "ready", timeout=180_000)
        engine = engine_process(sid)
        engine.send_signal(signal.SIGSTOP)
        try:
            hung(page, expect, row, session, engine)
        finally:  # before the session is stopped: a stopped process ignores SIGTERM
            with contextlib.suppress(psutil.Error):
                engine.send_signal(signal.SIGCONT)

    def hung(page, expect, row, session: dict, engine: psutil.Process) -> None:
        sid, name = session["id"], session["name"]
        badge = row.locator(".jp-hpcserve-badge")
        expect(badge).to_have_attribute("data-state", "degraded", timeout=90_000)
        expect(badge).to_have_text("ready · degraded")
        reason = lab.http.get(f"hpcserve/api/sessions/{sid}").json()["degraded_reason"]
        assert reason and reason in (badge.get_attribute("title") or "")
        toast = page.locator(".Toastify__toast--warning").filter(has_text=f"{name}:")
        expect(toast.first).to_be_visible(timeout=30_000)
        expect(toast.first.locator("button", has_text="Show log")).to_have_count(1)
        page.screenshot(path=str(artifacts / "time-04-degraded.png"))
        engine.send_signal(signal.SIGCONT)
        expect(badge).to_have_attribute("data-state", "ready", timeout=90_000)
        expect(badge).to_have_text("ready")
        expect(row).to_have_attribute("data-state", "ready")

    run_page(lab, browser_context, artifacts, "degraded", body)


def test_sparkline_of_a_ready_session(lab: LabServer, browser_context, artifacts: Path) -> None:
    """A llama-server session's row draws tokens/s and requests running (an inline SVG)
    beside the numbers once the server has its metrics, asked for while the sidebar shows."""
    llama_server_recipe.require()

    def body(page, expect) -> None:
        sidebar = open_lab_sidebar(page, lab, expect)
        session = launch(lab, llama_server_recipe.RECIPE)
        sid, name = session["id"], session["name"]
        row = sidebar.locator(f"li.jp-hpcserve-session[data-session-id='{sid}']")
        expect(row).to_have_attribute("data-state", "ready", timeout=180_000)
        with httpx.Client(base_url=lab.url, timeout=120, trust_env=False,
                          headers={"Authorization": f"token {TOKEN}"}) as http:
            for _ in range(3):
                r = http.post("hpcserve/v1/chat/completions", json={
                    "model": name, "max_tokens": 16,
                    "messages": [{"role": "user", "content": "Count to five."}]})
                assert r.status_code == 200, r.text
        metrics = row.locator(".jp-hpcserve-metrics")
        expect(metrics).to_have_attribute("data-available", "true", timeout=30_000)
        expect(metrics.locator("svg.jp-hpcserve-sparkline")).to_be_visible()
        expect(metrics.locator("polyline.jp-hpcserve-sparkline-tokens")).to_have_count(1)
        expect(metrics.locator(".jp-hpcserve-metrics-text")).to_contain_text("tok/s")
        # the server's history grows while the sidebar keeps asking: a line of two points on
        page.wait_for_function(
            "sel => Number(document.querySelector(sel)?.dataset.points) >= 2",
            arg=f"li[data-session-id='{sid}'] svg.jp-hpcserve-sparkline", timeout=90_000)
        line = metrics.locator("polyline.jp-hpcserve-sparkline-tokens").get_attribute("points")
        assert len(line.split()) >= 2, line
        server = lab.http.get(f"hpcserve/api/sessions/{sid}/metrics").json()
        assert server["available"] and server["generation_tokens_total"] > 0, server
        page.screenshot(path=str(artifacts / "time-03-sparkline.png"))

    run_page(lab, browser_context, artifacts, "sparkline", body)
