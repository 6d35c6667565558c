"""Gateway keys on a real jupyter_server with stand-in engines: created, listed and revoked over
REST with the Jupyter token; accepted by /hpcserve/v1 only (the official openai SDK as the
client), for the sessions of their scope; refused everywhere else; never logged or stored in
clear text."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import openai
import pytest

from hpcserve_jupyter.jupyter.routes import ROUTES
from hpcserve_jupyter.remote import RemoteHpcserve

pytestmark = pytest.mark.timeout(60)
MSGS = [{"role": "user", "content": "hi"}]


def jupyter(jp_serverapp) -> dict[str, str]:
    return {"Authorization": f"token {jp_serverapp.identity_provider.token}"}


async def create(base: str, jp_serverapp, **body) -> dict:
    async with httpx.AsyncClient() as http:
        r = await http.post(base + "hpcserve/api/keys", json=body,
                            headers=jupyter(jp_serverapp))
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    return r.json()


async def listed(base: str, jp_serverapp) -> list[dict]:
    async with httpx.AsyncClient() as http:
        r = await http.get(base + "hpcserve/api/keys", headers=jupyter(jp_serverapp))
    assert r.status_code == 200
    return r.json()["keys"]


def sdk(base: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "hpcserve/v1", api_key=key, max_retries=0)


@pytest.fixture
def server_log(jp_serverapp, ext):
    """Every record the server and the extension log during the test, at DEBUG (the access
    log included: Jupyter writes it to the extension's logger for its handlers)."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep(logging.DEBUG)
    loggers = [jp_serverapp.log, ext.log, logging.getLogger("tornado.access"),
               logging.getLogger("tornado.application"), logging.getLogger("tornado.general")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield records
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


async def test_a_scoped_key_streams_its_session_and_only_its_session(
        base, ext, jp_serverapp, register, standin, server_log, isolated_home):
    mine = register([standin.url], name="chat-a")
    other = register([standin.url], name="chat-b")
    created = await create(base, jp_serverapp, label="jupyter-ai", sessions=["chat-a"])
    key = created["key"]
    assert key.startswith("hsk_") and len(key) == 47
    assert created["scope"] == ["chat-a"] and created["prefix"] == key[:12]
    assert all("key" not in k for k in await listed(base, jp_serverapp))  # shown once

    async with sdk(base, key) as client:
        assert [m.id async for m in client.models.list()] == ["chat-a"]
        stream = await client.chat.completions.create(model="chat-a", messages=MSGS,
                                                      stream=True)
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content for c in chunks) == \
            "Hello from the stand-in."
        # the engine got the session's own key, never the gateway key
        assert chunks[0].model_extra["hpcserve"]["auth"] == f"Bearer {ext.manager.api_key(mine)}"
        answer = await client.chat.completions.create(model=mine.id, messages=MSGS)
        assert answer.choices[0].message.content == "Hello from the stand-in."
        assert (await client.models.retrieve("chat-a")).id == "chat-a"

        for name in ("chat-b", other.id):
            with pytest.raises(openai.PermissionDeniedError,
                               match=f"may not use session '{name}'") as exc:
                await client.chat.completions.create(model=name, messages=MSGS)
            assert exc.value.body["detail"] == "its sessions: chat-a"
        with pytest.raises(openai.PermissionDeniedError, match="may not use session 'chat-b'"):
            await client.models.retrieve("chat-b")
        with pytest.raises(openai.NotFoundError, match="no session serves model 'nope'") as exc:
            await client.chat.completions.create(model="nope", messages=MSGS)
        assert "chat-b" not in str(exc.value.body)  # other sessions stay unnamed
        # the served model name routes among the key's sessions only (two serve it)
        text = await client.completions.create(model="standin-model", prompt="x")
        assert text.choices[0].text == "Hello from the stand-in."

    used = next(k for k in await listed(base, jp_serverapp) if k["id"] == created["id"])
    assert used["last_used_at"] is not None and used["revoked_at"] is None

    # the Jupyter token keeps working on the gateway, and sees every session
    async with sdk(base, jp_serverapp.identity_provider.token) as client:
        assert [m.id async for m in client.models.list()] == ["chat-a", "chat-b"]

    # the key is nowhere in the server's log nor in the state directory, in clear text
    assert server_log and not any(key in line for line in server_log)
    assert any(f"gateway-key:{created['id']}" in line for line in server_log)
    for path in isolated_home.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
            assert key[4:].encode() not in path.read_bytes(), path


async def test_a_key_for_every_session_and_last_used_is_written_once_a_minute(
        base, jp_serverapp, register, standin):
    register([standin.url], name="chat-a")
    register([standin.url], name="chat-b")
    created = await create(base, jp_serverapp)
    assert created["scope"] == ["*"] and created["label"] == "key-1"
    assert created["last_used_at"] is None
    async with sdk(base, created["key"]) as client:
        assert [m.id async for m in client.models.list()] == ["chat-a", "chat-b"]
        first = next(k for k in await listed(base, jp_serverapp) if k["id"] == created["id"])
        assert first["last_used_at"] is not None
        for name in ("chat-a", "chat-b", "chat-a"):
            answer = await client.chat.completions.create(model=name, messages=MSGS)
            assert answer.model == name
    later = next(k for k in await listed(base, jp_serverapp) if k["id"] == created["id"])
    assert later["last_used_at"] == first["last_used_at"]  # within the minute: not rewritten


async def test_a_revoked_key_is_refused_at_once(base, jp_serverapp, register, standin):
    register([standin.url], name="chat-a")
    first = await create(base, jp_serverapp, label="first")
    second = await create(base, jp_serverapp, label="second", sessions=["chat-a"])
    async with httpx.AsyncClient() as http:
        for ref in (first["id"], "second"):  # by id, and by label
            r = await http.delete(base + f"hpcserve/api/keys/{ref}",
                                  headers=jupyter(jp_serverapp))
            assert r.status_code == 200 and r.json()["revoked_at"] is not None
            assert "key" not in r.json()
        revoked = next(k for k in await listed(base, jp_serverapp) if k["id"] == first["id"])
        again = await http.delete(base + f"hpcserve/api/keys/{first['id']}",
                                  headers=jupyter(jp_serverapp))
        assert again.status_code == 200  # revoking again changes nothing
        assert again.json()["revoked_at"] == revoked["revoked_at"]
        r = await http.delete(base + "hpcserve/api/keys/nope", headers=jupyter(jp_serverapp))
        assert r.status_code == 404 and "no gateway key 'nope'" in r.json()["error"]
    for created in (first, second):
        async with sdk(base, created["key"]) as client:
            with pytest.raises(openai.AuthenticationError, match="not valid") as exc:
                await client.chat.completions.create(model="chat-a", messages=MSGS)
            assert exc.value.status_code == 401
            with pytest.raises(openai.AuthenticationError):
                await client.models.list()
    assert standin.seen == []
    # a key-shaped token nobody issued: the same answer
    async with sdk(base, "hsk_" + "A" * 43) as client:
        with pytest.raises(openai.AuthenticationError, match="not valid"):
            await client.models.list()


def other_routes(session_id: str, key_id: str) -> list[tuple[str, str]]:
    """(method, path) of every hpcserve route outside /hpcserve/v1, and Jupyter's own API."""
    from tornado.web import RequestHandler

    cases = [("GET", "api/contents"), ("GET", "api/kernels"), ("POST", "api/kernels"),
             ("GET", "api/sessions"), ("GET", "api/me")]
    for route in ROUTES:
        if route.path.startswith("/hpcserve/v1/"):
            continue
        for m in route.handler.SUPPORTED_METHODS:
            if getattr(route.handler, m.lower()) is not RequestHandler._unimplemented_method:
                path = (route.path.replace("/hpcserve/api/keys/{id}", f"/hpcserve/api/keys/"
                                                                      f"{key_id}")
                        .replace("{id}", session_id).replace("{name}", "smollm2-135m")
                        .replace("{path}", "v1/chat/completions"))
                cases.append((m, path.lstrip("/")))
    return cases


@pytest.mark.parametrize("scheme", ["Bearer", "token"])
async def test_the_key_is_refused_on_every_other_route(base, ext, jp_serverapp, register,
                                                       standin, scheme):
    s = register([standin.url], name="chat-a")
    created = await create(base, jp_serverapp)
    headers = {"Authorization": f"{scheme} {created['key']}"}
    cases = other_routes(s.id, created["id"])
    paths = {p for _, p in cases}
    assert {"hpcserve/api/sessions", "hpcserve/api/keys", f"hpcserve/api/keys/{created['id']}",
            f"hpcserve/proxy/{s.id}/v1/chat/completions", "api/contents"} <= paths
    answered = []
    async with httpx.AsyncClient(timeout=10) as http:
        for method, path in cases:
            body = (b'{"model": "chat-a", "recipe": "smollm2-135m", "messages": []}'
                    if method in ("POST", "PUT", "PATCH") else None)
            r = await http.request(method, base + path, headers=headers, content=body)
            if r.status_code not in (401, 403):
                answered.append((method, path, r.status_code, r.text[:80]))
        assert answered == []
        # ... while the gateway takes it
        r = await http.get(base + "hpcserve/v1/models", headers=headers)
        assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["chat-a"]
    assert standin.seen == []  # nothing reached the engine through the other routes
    assert [k["revoked_at"] for k in await listed(base, jp_serverapp)] == [None]  # not revoked
    assert len(ext.manager.sessions()) == 1 and ext.manager.sessions()[0].state == "ready"
    assert ext.manager.store.query("SELECT COUNT(*) FROM gateway_keys")[0][0] == 1


async def test_bad_requests_to_create_a_key(base, jp_serverapp, register, standin):
    s = register([standin.url], name="chat-a")
    await create(base, jp_serverapp, label="taken")
    cases = [({"sessions": ["*", "chat-a"]}, 400, "cannot be combined"),
             ({"sessions": ["no-such"]}, 404, "no session 'no-such'"),
             ({"sessions": []}, 400, "needs a scope"),  # not every session
             ({"sessions": ["../x"]}, 400, "not a session name"),
             ({"label": "taken"}, 409, "exists already"),
             ({"label": "trailing\n"}, 400, "label"),
             ({"sessions": [s.id[:5]]}, 404, "no session"),  # an id prefix is not an id
             ({"label": "\nbad"}, 400, "label"),
             ({"key": "hsk_mine"}, 400, "unknown field 'key'")]
    async with httpx.AsyncClient() as http:
        for body, status, message in cases:
            r = await http.post(base + "hpcserve/api/keys", json=body,
                                headers=jupyter(jp_serverapp))
            assert r.status_code == status and message in r.json()["error"], (body, r.text)
    made = await create(base, jp_serverapp, sessions=[s.id, "chat-a", s.id])
    assert made["scope"] == [s.id, "chat-a"]


async def test_the_remote_facade_manages_keys(base, jp_serverapp, register, standin):
    register([standin.url], name="chat-a")

    def run():  # blocking calls: off the server's event loop
        with RemoteHpcserve(base, jp_serverapp.identity_provider.token) as hp:
            made = hp.create_gateway_key("notebook", sessions=["chat-a"])
            return made, hp.gateway_keys(), hp.revoke_gateway_key("notebook")

    made, keys, revoked = await asyncio.to_thread(run)
    assert made.key and made.key.startswith("hsk_") and made.key not in repr(made)
    assert [(k.id, k.label, k.scope, k.key) for k in keys] == \
        [(made.id, "notebook", ["chat-a"], None)]
    assert revoked.id == made.id and revoked.revoked
    async with sdk(base, made.key) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()


@pytest.mark.model
@pytest.mark.timeout(600)
def test_real_server_real_engine_key_from_the_cli(tmp_path, isolated_home, run_cli):
    """A `jupyter server` process and a llama.cpp session: a key made by `hpcserve keys create`
    (same state directory) streams through the gateway with the openai SDK, is refused on the
    server's other routes, stops at once when the CLI revokes it, and is in no log."""
    from test_jupyter_real_server import TOKEN, JupyterServer, free_port, wait_ready

    server = JupyterServer(tmp_path, free_port())
    sid = None
    try:
        r = server.http.post("hpcserve/api/sessions", json={"recipe": "smollm2-135m"})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        name = wait_ready(server, sid)["name"]
        made = run_cli("keys", "create", "--label", "real", "--session", name)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()

        client = openai.OpenAI(base_url=server.url + "hpcserve/v1", api_key=key,
                               max_retries=0)
        assert [m.id for m in client.models.list()] == [name]
        chunks = list(client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8,
            temperature=0, stream=True))
        assert {c.model for c in chunks} == {name}
        assert [c for c in chunks if c.choices and c.choices[0].delta.content]
        with httpx.Client(base_url=server.url, timeout=30, trust_env=False,
                          headers={"Authorization": f"Bearer {key}"}) as http:
            for method, path in [("GET", "api/contents"), ("GET", "api/kernels"),
                                 ("GET", "hpcserve/api/sessions"), ("GET", "hpcserve/api/keys"),
                                 ("DELETE", f"hpcserve/api/sessions/{sid}"),
                                 ("GET", f"hpcserve/proxy/{sid}/v1/models")]:
                assert http.request(method, path).status_code == 403, (method, path)
        assert server.http.get(f"hpcserve/api/sessions/{sid}").json()["state"] == "ready"

        assert run_cli("keys", "revoke", "real").returncode == 0
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        # the Jupyter token still works on the gateway
        jupyter_client = openai.OpenAI(base_url=server.url + "hpcserve/v1", api_key=TOKEN,
                                       max_retries=0)
        assert [m.id for m in jupyter_client.models.list()] == [name]
        log = server.logs()
        assert "403 GET /hpcserve/api/keys" in log  # the refusals were logged, not the key
        assert key not in log and key[4:] not in log
    finally:
        if sid is not None:
            server.http.delete(f"hpcserve/api/sessions/{sid}")
        server.sigterm()
    full_log = Path(server.log.name).read_text()
    assert key not in full_log and key[4:] not in full_log
