"""The control panel's time left, relaunch, extend, notices and load (issue 18), through
ipywidgets' Python-side models on a real embedded facade. A launch that fails at once (a GPU
recipe here, where there is none) gives a real ended session without an engine; the tests
marked `model` run SmolLM2 on llama.cpp."""

from __future__ import annotations

import contextlib
import signal
import time

import psutil
import pytest

import llama_server_recipe
from facade_fixtures import facade_fixture
from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.errors import HpcserveError
from hpcserve_jupyter.metrics.sparkline import sparkline
from hpcserve_jupyter.recipes import Catalog, builtin_recipe_dir
from hpcserve_jupyter.widgets import ControlPanel
from hpcserve_jupyter.widgets.session_row import EXPIRING_S, metrics_html

RECIPE = "smollm2-135m"


hp = facade_fixture()


def failed_launch(panel: ControlPanel) -> str:
    """bge-m3 with a 45m time from the form: it fails at once (no GPU). Its id."""
    panel.recipe.value = "bge-m3"
    panel.time.value = "45m"
    panel.launch_button.click()
    assert panel.join(60)
    assert panel.wait_for(lambda p: [r.state_name for r in p.rows.values()] == ["failed"], 10)
    (sid,) = panel.rows
    return sid


def test_relaunch_of_an_ended_session_makes_one_like_it(panel, hp):
    sid = failed_launch(panel)
    row = panel.rows[sid]
    assert not row.relaunch_button.disabled  # ended sessions can be relaunched
    assert row.extend_button.disabled  # ...but not extended
    assert "hpcserve-expiring" not in row.left.value  # nothing left to count down
    errors_before = len(panel.errors)

    row.relaunch_button.click()
    assert panel.join(60)
    assert panel.wait_for(lambda p: len(p.rows) == 2, 10)
    old, new = sorted(hp.sessions(), key=lambda s: s.created_at)
    assert old.id == sid and new.id != sid
    assert (new.recipe, new.backend, new.target) == (old.recipe, old.backend, old.target)
    assert new.name == "bge-m3-2"
    assert new.public()["resources"]["time_s"] == old.public()["resources"]["time_s"] == 2700
    assert panel.wait_for(lambda p: p.state_of(new.id) == "failed", 10)
    # this relaunch failed like the first launch: the status line says why, in red
    assert len(panel.errors) == errors_before + 1
    assert "GPU" in panel.status.value and "bge-m3" in panel.status.value
    assert "bge-m3-2  bge-m3  local  failed" in panel.table_text()


def test_extend_of_an_ended_session_is_refused_with_the_reason(panel, hp):
    sid = failed_launch(panel)
    before = len(panel.errors)
    panel.extend_time.value = ""
    panel.rows[sid].extend_button.click()  # disabled in the browser; scripted here
    assert len(panel.errors) == before + 1 and "extend by" in panel.status.value
    panel.extend(sid, "30m")
    assert panel.join(30)
    assert len(panel.errors) == before + 2
    assert "bge-m3-1" in panel.errors[-1]  # the service's refusal names the session
    assert hp.status(sid).state == "failed" and len(hp.sessions()) == 1


def test_load_cell_draws_the_history_or_says_why_not():
    m = {"session_id": "x", "available": True, "reason": "", "requests_running": 1,
         "requests_waiting": 0, "generation_tokens_per_s": 12.5, "kv_cache_usage": 0.25,
         "history": [[1000.0 + 10 * i, float(i % 4), i % 2] for i in range(30)],
         "gpus": {"available": False, "reason": "no GPU here", "gpus": []}}
    cell = metrics_html(m)
    assert 'class="hpcserve-sparkline"' in cell
    assert sparkline([p[1] for p in m["history"]], width=24) in cell
    assert "12.5 tok/s" in cell and "KV 25%" in cell and "GPU" not in cell  # none here
    off = metrics_html({"available": False, "reason": "the engine has no /metrics"})
    assert "no metrics" in off and "the engine has no /metrics" in off
    assert metrics_html(None) == "-"


def test_the_ticker_ends_with_the_facade(tmp_path):
    """The panel's clock thread runs while its facade does, and ends when the facade closes
    (a notebook that closes the facade leaves no thread ticking)."""
    hp = Hpcserve(home=tmp_path / "home", poll_interval=0.5,
                  target_configs={"local": {"kind": "local"}})
    panel = ControlPanel(hp, tick=0.2)
    ticker = panel._ticker
    assert ticker is not None and ticker.alive
    hp.close()
    deadline = time.monotonic() + 10
    while ticker.alive and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not ticker.alive
    panel.close()


# --------------------------------------------------------------------------- with the model


@pytest.mark.model
def test_countdown_amber_notice_relaunch_extend(panel, hp):
    """A 5-minute max lifetime (under the 10-minute warning): the countdown runs and is amber,
    the `expiring` notice shows in the events area; a relaunch from the row makes a session
    with the same settings (amber too), and extending it by an hour takes the amber away."""
    s = hp.launch(RECIPE, max_lifetime="5m", timeout=120)
    assert panel.wait_for(lambda p: p.state_of(s.id) == "ready", 10)
    row = panel.rows[s.id]
    assert row.expiring and "hpcserve-expiring" in row.left.value
    assert 0 < row.seconds_left() <= 300
    # the ticker counts down between events: the cell changes, the seconds fall
    first_cell, first_left = row.left.value, row.seconds_left()
    assert panel.wait_for(lambda p: p.rows[s.id].left.value != first_cell, 15)
    assert row.seconds_left() < first_left
    # one `expiring` notice, with the server's message, in the events area
    assert panel.wait_for(lambda p: any(n["type"] == "expiring" and n["session_id"] == s.id
                                        for n in p.notices), 20)
    notice = next(n for n in panel.notices if n["type"] == "expiring")
    assert notice["message"] and notice["name"] == s.name
    assert 'data-type="expiring"' in panel.notice_log.value and s.name in panel.notice_log.value

    row.relaunch_button.click()
    assert panel.join(60)
    assert panel.relaunched, panel.sessions.status.value
    (new_id,) = panel.relaunched
    assert panel.wait_for(lambda p: p.state_of(new_id) == "ready", 120)
    new = hp.status(new_id)
    assert (new.recipe, new.backend, new.target) == (RECIPE, s.backend, "local")
    assert new.max_lifetime_s == 300 and new.name != s.name
    assert panel.rows[new_id].expiring

    panel.extend_time.value = "1h"
    panel.rows[new_id].extend_button.click()
    assert panel.join(60)
    assert panel.wait_for(lambda p: not p.rows[new_id].expiring, 10), panel.status.value
    assert hp.status(new_id).max_lifetime_s == 300 + 3600
    assert hp.status(new_id).public()["time_left_s"] >= EXPIRING_S
    assert new.name in panel.status.value and not panel.errors


def engine_process(hp: Hpcserve, sid: str) -> psutil.Process:
    """The engine of a local session (`python -m llama_cpp.server`), from its handle's process
    group leader."""
    leaders = [psutil.Process(r["pid"]) for r in hp.manager.store.get(sid).handle["replicas"]]
    procs = [q for p in leaders for q in (p, *p.children(recursive=True))]
    engines = [p for p in procs if p.cmdline()[1:3] == ["-m", "llama_cpp.server"]]
    assert len(engines) == 1, [p.cmdline() for p in procs]
    return engines[0]


@pytest.mark.model
def test_a_hung_engine_is_marked_degraded_then_healthy(tmp_path):
    """SIGSTOP the engine (alive, port open, no answers): the row's state carries the
    `degraded` flag with its reason and the events area the `degraded` notice; SIGCONT clears
    the flag and brings a `healthy` notice. The state stays `ready` throughout."""
    hp = Hpcserve(home=tmp_path / "home", poll_interval=0.5, health_interval=1.0,
                  health_failures=2, target_configs={"local": {"kind": "local"}})
    panel = ControlPanel(hp)
    engine = None
    try:
        s = hp.launch(RECIPE, timeout=120)
        assert panel.wait_for(lambda p: p.state_of(s.id) == "ready", 10)
        engine = engine_process(hp, s.id)
        engine.send_signal(signal.SIGSTOP)
        assert panel.wait_for(lambda p: "hpcserve-degraded" in p.rows[s.id].state.value, 60)
        row = panel.rows[s.id]
        assert row.state_name == "ready" and "(degraded)" in row.state.value
        assert hp.status(s.id).degraded_reason in row.state.value
        assert any(n["type"] == "degraded" and n["session_id"] == s.id for n in panel.notices)
        engine.send_signal(signal.SIGCONT)
        assert panel.wait_for(lambda p: "hpcserve-degraded" not in p.rows[s.id].state.value,
                              60)
        assert row.state_name == "ready" and "(degraded)" not in row.state.value
        assert [n["type"] for n in panel.notices if n["session_id"] == s.id][-1] == "healthy"
        assert 'data-type="degraded"' in panel.notice_log.value
    finally:
        if engine is not None:
            with contextlib.suppress(psutil.Error):
                engine.send_signal(signal.SIGCONT)
        panel.close()
        for x in hp.sessions(live_only=True):
            with contextlib.suppress(HpcserveError):
                hp.stop(x.id)
        hp.close()


@pytest.mark.model
def test_load_cell_says_why_an_engine_has_no_metrics(panel, hp):
    """llama-cpp (llama-cpp-python's server) has no Prometheus endpoint: the ready session's
    load cell says so, with the server's reason in its tooltip, and draws no sparkline."""
    s = hp.launch(RECIPE, timeout=120)
    assert panel.wait_for(lambda p: p.state_of(s.id) == "ready", 10)
    panel.poll_metrics()
    row = panel.rows[s.id]
    assert row.metrics is not None and row.metrics["available"] is False, row.metrics
    assert row.metrics["reason"] == hp.metrics(s.id)["reason"] != ""
    assert "no metrics" in row.load.value and "hpcserve-sparkline" not in row.load.value


@pytest.mark.model
def test_load_cell_draws_the_engine_metrics(tmp_path):
    """llama-server has them: after prompts, the ticker (every 0.2 s here, metrics every
    0.5 s while the Sessions tab shows) fills the ready session's load cell with a sparkline
    of its tokens/s and the engine's counters."""
    llama_server_recipe.require()
    catalog = Catalog([builtin_recipe_dir(), llama_server_recipe.write_recipe(tmp_path / "r")])
    hp = Hpcserve(home=tmp_path / "home", poll_interval=0.5, catalog=catalog,
                  target_configs={"local": {"kind": "local"}})
    panel = ControlPanel(hp, tick=0.2, metrics_every=0.5)
    try:
        s = hp.launch(llama_server_recipe.RECIPE, timeout=180)
        assert s.state == "ready", hp.logs(s.id, tail=40)
        for _ in range(3):
            hp.prompt(s.id, "Count to five.", max_tokens=16)
        assert panel.tabs.selected_index == 0
        assert panel.wait_for(lambda p: (p.rows[s.id].metrics or {}).get("available") is True
                              and p.rows[s.id].metrics["generation_tokens_total"] > 0, 60), \
            panel.rows[s.id].load.value
        row = panel.rows[s.id]
        assert 'class="hpcserve-sparkline"' in row.load.value and "tok/s" in row.load.value
        assert hp.metrics(s.id)["generation_tokens_total"] >= \
            row.metrics["generation_tokens_total"]
        # another tab shown: the panel stops asking (the server scrapes only while watched)
        panel.tabs.selected_index = 1
        asked = row.metrics
        assert not panel.wait_for(lambda p: p.rows[s.id].metrics is not asked, 2)
    finally:
        panel.close()
        for x in hp.sessions(live_only=True):
            with contextlib.suppress(HpcserveError):
                hp.stop(x.id)
        hp.close()
