"""RemoteHpcserve (the facade over HTTP) and find_server, against a real jupyter_server with the
extension and a stand-in engine. The facade is blocking, so it runs in a thread while the
server runs on the test's event loop."""

from __future__ import annotations

import asyncio
import inspect
import time

import pytest
from jupyter_standin import dead_url

from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.errors import BadInput, EngineError, NotFound, NotReady
from hpcserve_jupyter.remote import RemoteHpcserve, find_server
from hpcserve_jupyter.sessions import Session, State

pytestmark = pytest.mark.timeout(60)


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")}


def test_same_public_methods_and_signatures_as_hpcserve():
    local, remote = public_methods(Hpcserve), public_methods(RemoteHpcserve)
    assert set(local) <= set(remote)
    for name, sig in local.items():
        assert list(sig.parameters) == list(remote[name].parameters), name
        for p, param in sig.parameters.items():
            assert param.kind == remote[name].parameters[p].kind, (name, p)
            assert param.default == remote[name].parameters[p].default, (name, p)
        assert str(sig.return_annotation) == str(remote[name].return_annotation), name


async def test_remote_facade_end_to_end(base, jp_serverapp, ext, register, standin):
    token = jp_serverapp.identity_provider.token
    s = register([standin.url], name="chat-a")

    def run() -> dict:
        out = {}
        with RemoteHpcserve(base, token) as hp:
            out["recipes"] = [r["name"] for r in hp.recipes()]
            out["recipe"] = hp.recipe("smollm2-135m")["backends"]
            out["errors"] = hp.recipe_errors()
            out["targets"] = [t["name"] for t in hp.targets()]
            out["sessions"] = hp.sessions(live_only=True)
            out["status"] = hp.status("chat-a")
            out["models"] = hp.models("chat-a")
            out["prompt"] = hp.prompt("chat-a", "hi", max_tokens=5)
            out["stream"] = list(hp.stream(s.id, "hi"))
            out["complete"] = hp.complete(s.id, "x")
            out["embed"] = hp.embed(s.id, "x")
            out["keepalive"] = hp.keepalive(s.id)
            out["logs"] = hp.logs(s.id)
            hp.refresh()
            client, session = hp.client(s.id)
            client.close()
            out["client_session"] = session
            out["stop"] = hp.stop(s.id)
            out["events"] = [e["kind"] for e in hp.events(s.id)]
            with pytest.raises(NotReady, match="launch it again"):
                hp.prompt(s.id, "hi")
            with pytest.raises(NotFound, match="no session 'nope'"):
                hp.status("nope")
            with pytest.raises(BadInput, match="unknown override 'bogus'"):
                hp.launch("smollm2-135m", bogus=1)
            with pytest.raises(NotFound, match="unknown recipe"):
                hp.recipe("nope")
        return out

    out = await asyncio.to_thread(run)
    assert "smollm2-135m" in out["recipes"] and out["recipe"] == ["llama-cpp"]
    assert out["errors"] == {} and out["targets"] == ["local"]
    assert [x.id for x in out["sessions"]] == [s.id]
    assert isinstance(out["status"], Session) and out["status"].state == State.READY
    assert out["models"] == ["standin-model"]
    assert out["prompt"] == "Hello from the stand-in."
    assert "".join(out["stream"]) == "Hello from the stand-in." and len(out["stream"]) == 6
    assert out["complete"] == "Hello from the stand-in." and out["embed"] == [[0.1, 0.2, 0.3]]
    assert out["keepalive"].last_activity >= s.last_activity
    assert out["client_session"].id == s.id
    assert out["stop"].state == State.STOPPED
    assert out["events"] == ["created", "keepalive", "stop", "stopped"]
    # prompts went through the proxy with the session's key, not the Jupyter token
    auth = {x["headers"].get("Authorization") for x in standin.seen}
    assert auth == {f"Bearer {ext.manager.api_key(s)}"}


async def test_wait_follows_the_event_stream(base, jp_serverapp, ext, register, standin):
    token = jp_serverapp.identity_provider.token
    # STARTING with an endpoint that does not answer: the monitor's readiness probe keeps it so
    s = register([dead_url()], state=State.STARTING)
    seen: list[str] = []

    def waiter() -> Session:
        with RemoteHpcserve(base, token) as hp:
            return hp.wait(s.id, timeout=20, progress=lambda x: seen.append(str(x.state)))

    task = asyncio.ensure_future(asyncio.to_thread(waiter))
    await asyncio.sleep(1.0)
    assert not task.done() and seen == ["starting"]
    await ext.manager.stop(s.id)
    done = await asyncio.wait_for(task, 10)
    assert done.state == State.STOPPED
    assert seen[0] == "starting" and seen[-1] == "stopped"

    def times_out() -> None:
        other = register([dead_url()], state=State.STARTING)
        with RemoteHpcserve(base, token) as hp, pytest.raises(NotReady, match="still starting"):
            hp.wait(other.id, timeout=0.5)

    await asyncio.to_thread(times_out)


async def test_find_server(base, jp_serverapp, monkeypatch):
    token = jp_serverapp.identity_provider.token
    monkeypatch.setenv("HPCSERVE_SERVER_URL", base)
    monkeypatch.setenv("HPCSERVE_SERVER_TOKEN", token)
    info = await asyncio.to_thread(find_server)
    assert info.url == base and info.token == token
    monkeypatch.setenv("HPCSERVE_SERVER_TOKEN", "wrong")
    with pytest.raises(Exception, match="does not answer"):
        await asyncio.to_thread(find_server)
    # Without the variables: the running servers of this runtime dir (pytest-jupyter's server
    # runs in this process; a kernel's server is its parent), checked by asking the extension.
    monkeypatch.delenv("HPCSERVE_SERVER_URL")
    monkeypatch.delenv("HPCSERVE_SERVER_TOKEN")
    info = await asyncio.to_thread(find_server)
    assert info is not None and info.token == token
    assert info.url.endswith(f":{jp_serverapp.port}/a%40b/")

    def connect() -> list[str]:
        with RemoteHpcserve.connect() as hp:
            return [t["name"] for t in hp.targets()]

    assert await asyncio.to_thread(connect) == ["local"]


async def test_watch_subscribe_secrets_and_batch(base, jp_serverapp, ext, register, standin):
    token = jp_serverapp.identity_provider.token
    s = register([standin.url], name="chat-a")

    def run() -> dict:
        out: dict = {}
        with RemoteHpcserve(base, token) as hp:
            sub = hp.watch()
            out["snapshot"] = sub.get(timeout=10)
            got: list[dict] = []
            cb = hp.subscribe(got.append, snapshot=False)
            hp.stop(s.id)
            out["watched"] = [sub.get(timeout=10)["type"] for _ in range(2)]
            for _ in range(100):
                if len(got) >= 2:
                    break
                time.sleep(0.05)
            out["subscribed"] = [e["type"] for e in got]
            sub.close()
            cb.close()
            out["closed"] = sub.get(timeout=1)
            out["secrets"] = hp.target_secrets("local")
            other = register([standin.url], name="chat-b")
            out["batch"] = [r.text for r in hp.batch(other.id, ["a", "b", "c"], progress=False)]
        return out

    out = await asyncio.to_thread(run)
    assert out["snapshot"]["type"] == "snapshot"
    assert [x["id"] for x in out["snapshot"]["sessions"]] == [s.id]
    assert out["watched"] == ["stop", "stopped"] and out["subscribed"] == ["stop", "stopped"]
    assert out["closed"] is None
    assert {"label": "Hugging Face token", "env": "HF_TOKEN"}.items() <= out["secrets"][0].items()
    assert out["batch"] == ["Hello from the stand-in."] * 3
    for _ in range(50):  # both event streams were closed: the server unsubscribed them
        if not ext.manager._subscribers:
            break
        await asyncio.sleep(0.05)
    assert not ext.manager._subscribers



async def test_wait_closes_its_event_stream(base, jp_serverapp, ext, register):
    """`wait` follows the server's events through a subscription of its own, closed when it
    returns or gives up: the server drops the subscriber either way."""
    token = jp_serverapp.identity_provider.token
    starting = register([dead_url()], state=State.STARTING)
    ready = register([dead_url()])

    def run() -> tuple[Session, int]:
        with RemoteHpcserve(base, token) as hp:  # still open: its connections are, too
            with pytest.raises(NotReady, match="still starting"):
                hp.wait(starting.id, timeout=0.5)
            done = hp.wait(ready.id, timeout=5)
            for _ in range(100):
                if not ext.manager._subscribers:
                    break
                time.sleep(0.05)
            return done, len(ext.manager._subscribers)

    done, subscribers = await asyncio.to_thread(run)
    assert done.state == State.READY and subscribers == 0


async def test_proxy_errors_reach_the_prompt_with_message_and_hint(base, jp_serverapp, register):
    """An engine that does not answer behind the proxy: the proxy's message and its hint, both
    (one error reading for the REST API and the engine client)."""
    token = jp_serverapp.identity_provider.token
    s = register([dead_url()], name="dead-engine")

    def run() -> EngineError:
        with RemoteHpcserve(base, token) as hp, pytest.raises(EngineError) as err:
            hp.prompt(s.id, "hi")
        return err.value

    err = await asyncio.to_thread(run)
    assert err.status_code == 502
    assert err.message.startswith("the engine answered 502: session dead-engine is unreachable")
    assert f"see GET /hpcserve/api/sessions/{s.id}/logs" in err.message
