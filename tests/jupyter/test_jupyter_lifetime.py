"""Relaunch, extend and metrics over REST on a real jupyter_server: relaunch reproduces the
settings under the next name, extend raises the max lifetime within the bound and refuses
past it or on an ended session with a clear message, and metrics are scraped from the engine's
Prometheus endpoint (a stand-in serving a recorded sample) only when asked, or say why not."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

pytestmark = pytest.mark.timeout(120)
SAMPLES = Path(__file__).resolve().parents[1] / "metrics" / "samples"


async def call(jp_fetch, *parts, **kwargs):
    try:
        r = await jp_fetch("hpcserve", "api", *parts, **kwargs)
    except HTTPClientError as exc:
        assert "Traceback" not in exc.response.body.decode()
        return exc.code, json.loads(exc.response.body)
    return r.code, json.loads(r.body)


async def test_extend_raises_the_max_lifetime_within_the_bound(jp_fetch, register, standin,
                                                              ext):
    s = register([standin.url])
    s.max_lifetime_s = 3600
    ext.manager.store.update(s)
    code, done = await call(jp_fetch, "sessions", s.id, "extend", method="POST",
                            body=json.dumps({"time": "30m"}))
    assert code == 200, done
    assert done["session"]["max_lifetime_s"] == 3600 + 1800
    assert "5400" in done["message"]
    code, err = await call(jp_fetch, "sessions", s.id, "extend", method="POST",
                           body=json.dumps({"time": "30d"}))
    assert code == 409 and "more than" in err["error"], err  # the default bound: 7 days
    code, err = await call(jp_fetch, "sessions", s.id, "extend", method="POST",
                           body=json.dumps({"time": "soon"}))
    assert code == 400 and "invalid time" in err["error"], err
    code, err = await call(jp_fetch, "sessions", s.id, "extend", method="POST",
                           body=json.dumps({"minutes": 5}))
    assert code == 400 and "minutes" in err["error"], err
    events = [e["kind"] for e in (await call(jp_fetch, "events", "log",
                                             params={"session": s.id}))[1]["events"]]
    assert events.count("extended") == 1
    # nothing limits a session without a max lifetime on a local target: nothing to extend
    free = register([standin.url])
    free.max_lifetime_s = None
    ext.manager.store.update(free)
    code, err = await call(jp_fetch, "sessions", free.id, "extend", method="POST",
                           body=json.dumps({"time": "30m"}))
    assert code == 409 and "nothing limits" in err["error"], err
    assert ext.manager.get(free.id).max_lifetime_s is None


def activity_events(queue, sid: str) -> list[dict]:
    seen = []
    while not queue.empty():
        event = queue.get_nowait()
        if event["type"] == "activity" and event["session"]["id"] == sid:
            seen.append(event)
    return seen


async def test_traffic_moves_the_idle_countdown_subscribers_see(register, standin, ext):
    """Requests reset the idle timer without writing an event; a tick tells subscribers (the
    sidebar, the panel) the moved countdown in an `activity` event once it is off by more than
    the slack (here 1 s of a 20 s idle timeout), not for every request."""
    from hpcserve_jupyter.eventpub import activity_slack

    s = register([standin.url])
    s.idle_timeout_s = 20
    ext.manager.store.update(s)
    assert activity_slack(20) == 1.0
    queue = ext.manager.subscribe()
    try:
        await ext.manager.tick()
        activity_events(queue, s.id)  # the first tick may tell the countdown once: a baseline
        ext.manager.touch(s.id)  # what the proxy and the gateway do on each request
        await ext.manager.tick()
        assert activity_events(queue, s.id) == []  # moved by less than the slack
        await asyncio.sleep(1.5)
        touched = time.time()
        ext.manager.touch(s.id)
        await ext.manager.tick()
        told = activity_events(queue, s.id)
        assert len(told) == 1, told
        session = told[0]["session"]
        assert session["state"] == "ready" and session["last_activity"] >= touched
        assert session["idle_stop_in_s"] >= 19  # counted from this request, not from launch
        await ext.manager.tick()
        assert activity_events(queue, s.id) == []  # told once
    finally:
        ext.manager.unsubscribe(queue)


async def test_relaunch_of_an_unknown_session_is_404(jp_fetch):
    code, err = await call(jp_fetch, "sessions", "nope", "relaunch", method="POST", body="")
    assert code == 404 and "nope" in err["error"], err


async def test_metrics_are_scraped_when_asked_and_say_why_not(jp_fetch, register, standin,
                                                              ext):
    s = register([standin.url])  # backend llama-cpp: llama-cpp-python has no /metrics
    code, m = await call(jp_fetch, "sessions", s.id, "metrics")
    assert code == 200 and m["available"] is False
    assert "no Prometheus metrics endpoint" in m["reason"]
    assert not [r for r in standin.seen if r["path"] == "/metrics"]

    sg = register([standin.url])
    sg.backend = "sglang"
    ext.manager.store.update(sg)
    standin.serve_metrics((SAMPLES / "sglang.txt").read_text())
    code, m = await call(jp_fetch, "sessions", sg.id, "metrics")
    assert code == 200 and m["available"] is True, m
    assert (m["requests_running"], m["requests_waiting"]) == (5, 5)
    assert (m["prompt_tokens_total"], m["generation_tokens_total"]) == (1234, 5678)
    scrapes = [r for r in standin.seen if r["path"] == "/metrics"]
    assert len(scrapes) == 1
    assert scrapes[0]["headers"]["Authorization"] == f"Bearer {ext.manager.api_key(sg)}"
    assert m["gpus"]["available"] is False and m["gpus"]["reason"]  # no GPU on this machine
    # asked again at once: the same scrape (at most one per monitor tick)
    code, again = await call(jp_fetch, "sessions", sg.id, "metrics")
    assert again["generation_tokens_total"] == 5678
    assert len([r for r in standin.seen if r["path"] == "/metrics"]) == 1
    # the engine counts on; a scrape a tick later (asked, or the watched session's in the
    # background) gives a rate
    standin.serve_metrics((SAMPLES / "sglang.txt").read_text().replace(
        "5678.0", "5978.0"))
    await asyncio.sleep(ext.manager.poll_interval + 0.1)
    code, later = await call(jp_fetch, "sessions", sg.id, "metrics")
    assert later["generation_tokens_total"] == 5978
    assert later["generation_tokens_per_s"] and later["generation_tokens_per_s"] > 0
    assert later["history"] and len(later["history"][-1]) == 3
