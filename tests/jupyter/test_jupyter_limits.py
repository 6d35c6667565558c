"""Admission control (in-flight limit, FIFO queue, 429 with Retry-After) and timeouts, with
the limits configured as traits of the extension."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest
from traitlets import TraitError

from hpcserve_jupyter.jupyter.app import HpcserveApp

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def hpcserve_config():
    return {"poll_interval": 0.5, "max_inflight_per_replica": 1, "max_queue": 1,
            "queue_timeout": 10.0, "proxy_read_timeout": 1.5, "default_idle_timeout": "30m",
            "default_max_lifetime": "8h"}


async def test_gateway_admits_n_queues_fifo_and_answers_429(base, ext, register, standin,
                                                            jp_auth_header):
    register([standin.url], name="busy")

    async def ask(client, i):
        r = await client.post(base + "hpcserve/v1/chat/completions", headers=jp_auth_header,
                              json={"model": "busy", "messages": [], "delay": 0.6, "i": i})
        return r

    async with httpx.AsyncClient(timeout=20) as client:
        first = asyncio.ensure_future(ask(client, 0))
        await asyncio.sleep(0.2)
        second = asyncio.ensure_future(ask(client, 1))  # queued
        await asyncio.sleep(0.2)
        third = await ask(client, 2)  # in flight 1 + queue 1: refused at once
        assert third.status_code == 429
        assert int(third.headers["Retry-After"]) >= 1
        err = third.json()["error"]
        assert "busy" in err["message"] and err["type"] == "overloaded"
        assert (await first).status_code == 200 and (await second).status_code == 200
    # the queued request reached the engine after the first one finished
    order = [x for x in standin.seen if x["path"] == "/v1/chat/completions"]
    assert len(order) == 2
    view = ext.groups[next(iter(ext.groups))].view()
    assert view["rejected"] == 1 and view["queued"] == 0
    assert view["replicas"][0]["inflight"] == 0


async def test_proxy_posts_are_admitted_reads_are_not(base, register, standin, jp_auth_header):
    s = register([standin.url])
    url = base + f"hpcserve/proxy/{s.id}/"
    async with httpx.AsyncClient(timeout=20) as client:
        busy = asyncio.ensure_future(client.post(url + "v1/chat/completions",
                                                 headers=jp_auth_header,
                                                 json={"messages": [], "delay": 0.8}))
        await asyncio.sleep(0.2)
        queued = asyncio.ensure_future(client.post(url + "v1/completions",
                                                   headers=jp_auth_header,
                                                   json={"prompt": "x", "delay": 0.1}))
        await asyncio.sleep(0.1)
        refused = await client.post(url + "echo", headers=jp_auth_header, content=b"x")
        assert refused.status_code == 429 and refused.json()["reason"] == "overloaded"
        read = await client.get(url + "v1/models", headers=jp_auth_header)
        assert read.status_code == 200  # reads bypass admission
        assert (await busy).status_code == 200 and (await queued).status_code == 200


async def test_a_client_that_leaves_the_queue_frees_its_place(base, ext, register, standin,
                                                              jp_auth_header):
    s = register([standin.url], name="busy")
    async with httpx.AsyncClient(timeout=20) as client:
        busy = asyncio.ensure_future(client.post(
            base + "hpcserve/v1/chat/completions", headers=jp_auth_header,
            json={"model": "busy", "messages": [], "delay": 1.0}))
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(timeout=0.3) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                await impatient.post(base + "hpcserve/v1/chat/completions",
                                     headers=jp_auth_header,
                                     json={"model": "busy", "messages": []})
        await asyncio.sleep(0.2)
        assert ext.groups[s.id].queued == 0  # its place is free: the next one queues
        r = await client.post(base + "hpcserve/v1/chat/completions", headers=jp_auth_header,
                              json={"model": "busy", "messages": []})
        assert r.status_code == 200 and (await busy).status_code == 200
    assert len([x for x in standin.seen if x["path"] == "/v1/chat/completions"]) == 2


async def test_an_engine_that_does_not_answer_in_time_is_504(jp_fetch, register, standin):
    s = register([standin.url])
    r = await jp_fetch("hpcserve", "proxy", s.id, "slow", params={"s": "3"}, raise_error=False)
    body = json.loads(r.body)
    assert r.code == 504 and body["reason"] == "timeout"
    assert "did not answer in time" in body["error"]


async def test_default_idle_timeout_and_max_lifetime_apply_to_launches(jp_fetch, ext):
    with socket.socket() as busy:  # the target refuses the port: recorded (failed), not run
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for overrides in ({"port": port}, {"port": port, "idle_timeout": "5m"}):
            await jp_fetch("hpcserve", "api", "sessions", method="POST", raise_error=False,
                           body=json.dumps({"recipe": "smollm2-135m", "overrides": overrides}))
    first, second = ext.manager.sessions()
    assert (first.idle_timeout_s, first.max_lifetime_s) == (1800, 8 * 3600)
    assert (second.idle_timeout_s, second.max_lifetime_s) == (300, 8 * 3600)


def test_durations_are_validated_when_configured():
    with pytest.raises(TraitError, match="not a duration"):
        HpcserveApp(default_idle_timeout="soon")
    assert HpcserveApp(default_max_lifetime="0").default_max_lifetime == "0"
