"""The proxy /hpcserve/proxy/{id}/{path} on a real jupyter_server, to a stand-in engine: headers
and credentials, streaming both ways, crafted paths, session states, concurrency, failover."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from jupyter_standin import dead_url
from tornado.httpclient import HTTPClientError

from hpcserve_jupyter.sessions import State

pytestmark = pytest.mark.timeout(60)


def proxy(base: str, session, path: str = "") -> str:
    return f"{base}hpcserve/proxy/{session.id}/{path}"


async def raw_request(port: int, target: str, headers: dict[str, str],
                      method: str = "GET") -> tuple[int, bytes]:
    """Send the request target byte for byte (HTTP clients normalise '..' and friends)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(head.encode("latin-1"))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


async def test_forwards_with_the_session_key_and_without_jupyter_credentials(
        base, ext, register, standin, jp_auth_header, jp_serverapp):
    s = register([standin.url])
    token = jp_serverapp.identity_provider.token
    headers = {**jp_auth_header, "X-XSRFToken": "abc", "X-Custom": "yes",
               "Cookie": "_xsrf=abc; username-127-0-0-1-8888=secret; theirs=1"}
    async with httpx.AsyncClient() as client:
        r = await client.get(proxy(base, s, f"echo/a/./b//c?token={token}&x=1&_xsrf=abc"),
                             headers=headers)
    assert r.status_code == 200 and r.headers["x-standin"] == "1"
    echo = r.json()
    sent = {k.lower(): v for k, v in echo["headers"]}
    assert echo["path"] == "/echo/a/b/c" and echo["query"] == "x=1"
    assert sent["authorization"] == f"Bearer {ext.manager.api_key(s)}"
    assert token not in json.dumps(echo)
    assert "x-xsrftoken" not in sent and sent["cookie"] == "theirs=1"
    assert sent["x-custom"] == "yes"
    assert sent["x-forwarded-prefix"].endswith(f"/hpcserve/proxy/{s.id}")


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
async def test_every_method_is_forwarded(base, register, standin, jp_auth_header, method):
    s = register([standin.url])
    body = b'{"a": 1}' if method in ("POST", "PUT", "PATCH") else None
    async with httpx.AsyncClient() as client:
        r = await client.request(method, proxy(base, s, "echo"), content=body,
                                 headers=jp_auth_header)
    assert r.status_code == 200
    assert standin.seen[-1]["method"] == method
    if method != "HEAD":
        assert r.json()["method"] == method
        assert r.json()["body_len"] == (len(body) if body else 0)
    else:
        assert r.content == b"" and int(r.headers["content-length"]) > 0


async def test_a_large_body_with_expect_100_continue(jp_http_port, base, register, standin,
                                                     jp_auth_header):
    s = register([standin.url])
    body = b"z" * 5000
    reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
    head = (f"POST {base.split(str(jp_http_port), 1)[1]}hpcserve/proxy/{s.id}/echo HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nAuthorization: {jp_auth_header['Authorization']}\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
    writer.write(head.encode())
    await writer.drain()
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 100")
    writer.write(body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    final = data.split(b"HTTP/1.1 ", 1)[1]
    assert final.startswith(b"200")
    echo = json.loads(final.partition(b"\r\n\r\n")[2])
    assert echo["body_len"] == 5000
    assert "expect" not in {k.lower() for k, _ in echo["headers"]}


async def test_the_root_of_the_endpoint_is_reachable(base, register, standin, jp_auth_header):
    s = register([standin.url])
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{base}hpcserve/proxy/{s.id}", headers=jp_auth_header)
    assert r.status_code == 200 and r.json()["path"] == "/"


async def test_request_body_is_streamed_upstream(jp_fetch, register, standin):
    s = register([standin.url])
    arrived_early = []

    async def producer(write):
        await write(b"x" * 1000)
        # The second chunk is sent only once the engine has the first: a proxy that buffered
        # the whole body would leave the engine waiting here.
        arrived_early.append(await asyncio.to_thread(standin.server.first_chunk.wait, 10))
        await write(b"y" * 500)

    response = await jp_fetch("hpcserve", "proxy", s.id, "upload", method="POST",
                              body_producer=producer, request_timeout=20)
    assert arrived_early == [True]
    echo = json.loads(response.body)
    assert echo["body_len"] == 1500 and echo["body"].endswith("y" * 500)
    assert len(standin.server.chunks) >= 2


async def test_event_stream_is_relayed_unbuffered(base, register, standin, jp_auth_header):
    s = register([standin.url])
    times, events = [], []
    start = time.monotonic()
    async with httpx.AsyncClient(timeout=20) as client, client.stream(
            "GET", proxy(base, s, "sse?n=5&delay=0.3"), headers=jp_auth_header) as r:
        assert r.headers["content-type"] == "text/event-stream"
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                times.append(time.monotonic() - start)
                events.append(json.loads(line[6:])["i"])
    assert events == [0, 1, 2, 3, 4]
    assert times[0] < times[-1] - 0.9  # the first event came ~1.2 s before the last


async def test_an_answer_broken_upstream_is_broken_for_the_client(base, ext, register,
                                                                   standin, jp_auth_header):
    s = register([standin.url])
    events = []
    async with httpx.AsyncClient(timeout=20) as client:
        with pytest.raises(httpx.RemoteProtocolError):  # no terminating chunk: not "complete"
            async with client.stream("GET", proxy(base, s, "broken"),
                                     headers=jp_auth_header) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        events.append(line)
        assert events == ["data: 0", "data: 1"]
        # the server goes on serving, and the replica slot was released
        r = await client.get(proxy(base, s, "v1/models"), headers=jp_auth_header)
        assert r.status_code == 200
    assert all(rep["inflight"] == 0 for rep in ext.groups[s.id].view()["replicas"])


async def test_a_slow_upstream_does_not_block_other_requests(base, register, standin,
                                                             jp_auth_header):
    s = register([standin.url])
    async with httpx.AsyncClient(timeout=20) as client:
        slow = asyncio.ensure_future(client.get(proxy(base, s, "slow?s=3"),
                                                headers=jp_auth_header))
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        for _ in range(5):
            r = await client.get(proxy(base, s, "v1/models"), headers=jp_auth_header)
            assert r.status_code == 200
            r = await client.get(base + "hpcserve/api/sessions", headers=jp_auth_header)
            assert r.status_code == 200
        assert time.monotonic() - t0 < 1.5
        assert not slow.done()
        assert (await slow).json() == {"slow": True}


async def test_traffic_counts_as_activity(base, ext, register, standin, jp_auth_header,
                                          jp_serverapp):
    s = register([standin.url])
    before = ext.manager.store.get(s.id).last_activity
    jp_serverapp.web_app.settings.pop("api_last_activity", None)
    t0 = time.time()
    async with httpx.AsyncClient() as client:
        r = await client.get(proxy(base, s, "v1/models"), headers=jp_auth_header)
    assert r.status_code == 200
    assert ext.manager.store.get(s.id).last_activity > before
    assert jp_serverapp.web_app.settings["api_last_activity"].timestamp() >= t0 - 1
    assert jp_serverapp.web_app.last_activity().timestamp() >= t0 - 1


CRAFTED = [
    "{id}/../../api/status", "{id}/%2e%2e/%2e%2e/api/status", "{id}/a/%2E%2E/%2e%2E/x",
    "{id}/a%2Fb", "{id}/a%2fb", "{id}/a%5cb", "{id}/a\\b", "{id}/@evil.example/x",
    "{id}/x%40evil.example", "{id}/http://evil.example/x", "{id}/http:%2F%2Fevil.example",
    "{id}//evil.example/x", "{id}/%2F%2Fevil.example", "{id}/x%00y", "{id}/javascript:x",
]


@pytest.mark.parametrize("path", CRAFTED)
async def test_crafted_paths_are_refused(base, jp_http_port, jp_base_url, register, standin,
                                         jp_auth_header, path):
    s = register([standin.url])
    target = f"{jp_base_url}hpcserve/proxy/" + path.format(id=s.id)
    status, body = await raw_request(jp_http_port, target, jp_auth_header)
    assert status in (400, 404), (status, body[:200])
    assert standin.seen == []
    if status == 400:
        assert json.loads(body)["reason"] == "bad-path"


@pytest.mark.parametrize("target", [
    "{base}hpcserve/proxy/nosuch/v1/models", "{base}hpcserve/proxy/{id}@evil.example/v1/models",
    "{base}hpcserve/proxy/..%2f{id}/v1/models", "{base}hpcserve/proxy/{prefix}/v1/models",
    "http://evil.example{base}hpcserve/proxy/{id}/v1/models",
])
async def test_unregistered_sessions_and_hosts_are_unreachable(base, jp_http_port, jp_base_url,
                                                               register, standin,
                                                               jp_auth_header, target):
    s = register([standin.url])
    raw = target.format(base=jp_base_url, id=s.id, prefix=s.id[:4])
    status, body = await raw_request(jp_http_port, raw, jp_auth_header)
    assert status in (400, 404), (status, body[:200])
    assert standin.seen == []


async def test_a_crafted_host_header_does_not_change_the_upstream(base, jp_http_port,
                                                                  jp_base_url,
                                                                  register, standin,
                                                                  jp_auth_header):
    s = register([standin.url])
    headers = {**jp_auth_header, "X-Forwarded-Host": "evil.example",
               "Forwarded": "host=evil.example"}
    status, _body = await raw_request(jp_http_port, f"{jp_base_url}hpcserve/proxy/{s.id}/echo",
                                     headers)
    assert status == 200
    assert standin.seen and standin.seen[-1]["path"] == "/echo"


async def test_session_states_map_to_502_503(jp_fetch, ext, register, standin):
    starting = register([dead_url()], state=State.STARTING)
    with pytest.raises(HTTPClientError) as exc:
        await jp_fetch("hpcserve", "proxy", starting.id, "v1/models")
    body = json.loads(exc.value.response.body)
    assert exc.value.code == 503 and body["reason"] == "starting"
    assert exc.value.response.headers["Retry-After"] == "2"
    assert body["session_state"] == "starting"

    gone = register([standin.url])
    await ext.manager.stop(gone.id)
    with pytest.raises(HTTPClientError) as exc:
        await jp_fetch("hpcserve", "proxy", gone.id, "v1/models")
    body = json.loads(exc.value.response.body)
    assert exc.value.code == 502 and body["reason"] == "gone" and "stopped" in body["error"]

    down = register([dead_url()])
    with pytest.raises(HTTPClientError) as exc:
        await jp_fetch("hpcserve", "proxy", down.id, "v1/models")
    body = json.loads(exc.value.response.body)
    assert exc.value.code == 502 and body["reason"] == "unreachable"
    assert "cannot connect" in body["error"] and "logs" in body["detail"]
    assert standin.seen == []


async def test_failover_to_the_next_replica_and_out_of_rotation(base, ext, register, standin,
                                                                jp_auth_header):
    dead = dead_url()
    s = register([dead, standin.url])
    async with httpx.AsyncClient() as client:
        for _ in range(6):
            r = await client.get(proxy(base, s, "v1/models"), headers=jp_auth_header)
            assert r.status_code == 200
        # a POST with a body fails over too (nothing of it was sent to the dead replica)
        r = await client.post(proxy(base, s, "echo"), content=b"hello", headers=jp_auth_header)
        assert r.json()["body"] == "hello"
    view = ext.groups[s.id].view()
    out = {r["url"]: r for r in view["replicas"]}
    assert out[dead]["in_service"] is False and out[standin.url]["in_service"] is True
    assert len(standin.seen) == 7


async def test_upstream_status_and_errors_pass_through(base, register, standin,
                                                       jp_auth_header):
    s = register([standin.url])
    async with httpx.AsyncClient() as client:
        r = await client.post(proxy(base, s, "v1/chat/completions"), headers=jp_auth_header,
                              json={"model": "m", "messages": [], "stream": False})
    assert r.status_code == 200
    assert r.json()["hpcserve"]["model"] == "m"  # the proxy does not touch bodies
