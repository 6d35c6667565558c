"""The OpenAI-compatible gateway /hpcserve/v1/ and the per-session views, on a real
jupyter_server with stand-in engines; the official openai SDK as the client."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from jupyter_standin import StandIn, dead_url

from hpcserve_jupyter.sessions import State

pytestmark = pytest.mark.timeout(60)


def sdk(base: str, jp_serverapp) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "hpcserve/v1",
                              api_key=jp_serverapp.identity_provider.token, max_retries=0)


async def test_models_lists_ready_openai_sessions_by_name(base, jp_serverapp, register,
                                                         standin):
    ready = register([standin.url], name="chat-a")
    register([dead_url()], name="warming", state=State.STARTING)
    register([standin.url], name="vectors", api_flavour="qdrant", model="qdrant")
    async with sdk(base, jp_serverapp) as client:
        models = [m async for m in client.models.list()]
        assert [m.id for m in models] == ["chat-a"]
        assert models[0].model_extra["session_id"] == ready.id
        assert models[0].model_extra["served_model"] == "standin-model"
        one = await client.models.retrieve("chat-a")
        assert one.id == "chat-a" and one.owned_by == "tester"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("nope")


async def test_openai_sdk_streams_chat_through_the_gateway(base, ext, jp_serverapp, register,
                                                           standin):
    s = register([standin.url], name="chat-a")
    async with sdk(base, jp_serverapp) as client:
        stream = await client.chat.completions.create(
            model="chat-a", messages=[{"role": "user", "content": "hi"}], stream=True)
        deltas, seen = [], None
        async for chunk in stream:
            deltas.append(chunk.choices[0].delta.content)
            seen = chunk.model_extra["hpcserve"]
        assert "".join(deltas) == "Hello from the stand-in."
        # the engine got its own served name and the session's key, never the Jupyter token
        assert seen["model"] == "standin-model"
        assert seen["auth"] == f"Bearer {ext.manager.api_key(s)}"
        answer = await client.chat.completions.create(
            model=s.id, messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "Hello from the stand-in."
        text = await client.completions.create(model="standin-model", prompt="x")
        assert text.choices[0].text == "Hello from the stand-in."
        emb = await client.embeddings.create(model="chat-a", input="x")
        assert emb.data[0].embedding == [0.1, 0.2, 0.3]


async def test_answers_name_the_model_asked_for_and_the_limit_reaches_the_engine(
        base, jp_serverapp, register, standin):
    """Engines name their own served model; clients (LiteLLM, LangChain) expect the name they
    sent. LangChain's `max_completion_tokens` reaches engines that know only `max_tokens`."""
    s = register([standin.url], name="chat-a")
    async with sdk(base, jp_serverapp) as client:
        for asked in ("chat-a", s.id):
            stream = await client.chat.completions.create(
                model=asked, messages=[{"role": "user", "content": "hi"}], stream=True,
                max_completion_tokens=5)
            chunks = [c async for c in stream]
            assert {c.model for c in chunks} == {asked}
            assert "".join(c.choices[0].delta.content for c in chunks) == \
                "Hello from the stand-in."
            assert chunks[0].model_extra["hpcserve"]["model"] == "standin-model"  # sent on
            assert chunks[0].model_extra["hpcserve"]["max_tokens"] == 5
            answer = await client.chat.completions.create(
                model=asked, messages=[{"role": "user", "content": "hi"}],
                max_completion_tokens=3, max_tokens=7)
            assert answer.model == asked
            assert answer.model_extra["hpcserve"]["max_tokens"] == 7  # both: the client's own
            assert answer.usage.total_tokens == 7  # the rest of the answer untouched
        text = await client.completions.create(model="chat-a", prompt="x", stream=True)
        assert {c.model async for c in text} == {"chat-a"}
        emb = await client.embeddings.create(model="chat-a", input="x")
        assert emb.model == "chat-a" and emb.data[0].embedding == [0.1, 0.2, 0.3]


async def test_routing_errors_are_openai_shaped(base, jp_serverapp, register, standin):
    register([standin.url], name="one")
    register([standin.url], name="two")
    register([dead_url()], name="warming", state=State.STARTING)
    register([standin.url], name="vectors", api_flavour="qdrant", model="qdrant")
    async with sdk(base, jp_serverapp) as client:
        msgs = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.BadRequestError,
                           match="2 sessions serve model 'standin-model'"):
            await client.chat.completions.create(model="standin-model", messages=msgs)
        with pytest.raises(openai.NotFoundError, match="no session serves model 'nope'") as exc:
            await client.chat.completions.create(model="nope", messages=msgs)
        assert "one, two" in exc.value.body["detail"]
        with pytest.raises(openai.InternalServerError) as exc:
            await client.chat.completions.create(model="warming", messages=msgs)
        assert exc.value.status_code == 503 and exc.value.response.headers["retry-after"] == "2"
        with pytest.raises(openai.BadRequestError, match="qdrant API"):
            await client.embeddings.create(model="vectors", input="x")
        async with httpx.AsyncClient() as raw:
            headers = {"Authorization": f"Bearer {jp_serverapp.identity_provider.token}"}
            r = await raw.post(base + "hpcserve/v1/chat/completions", content=b"{nope",
                               headers=headers)
            assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
            r = await raw.post(base + "hpcserve/v1/chat/completions", json={"messages": []},
                               headers=headers)
            assert r.status_code == 400 and "'model'" in r.json()["error"]["message"]


async def test_round_robin_over_replicas_and_failover(base, ext, jp_serverapp, register):
    a, b = StandIn(), StandIn()
    dead = dead_url()
    try:
        s = register([a.url, dead, b.url], name="group")
        async with sdk(base, jp_serverapp) as client:
            ports = []
            for _ in range(9):
                r = await client.chat.completions.create(
                    model="group", messages=[{"role": "user", "content": "hi"}])
                ports.append(r.model_extra["hpcserve"]["port"])
            # every request answered; both live replicas served; the dead one is out of rotation
            pa, pb = a.server.server_address[1], b.server.server_address[1]
            assert set(ports) == {pa, pb}
            assert ports.count(pa) >= 3 and ports.count(pb) >= 3
            group = ext.groups[s.id].view()["replicas"]
            assert [r["in_service"] for r in group] == [True, False, True]
    finally:
        a.close()
        b.close()


async def test_a_replica_taken_out_returns_when_its_health_check_passes(base, ext, jp_serverapp,
                                                                        register, standin):
    dead = dead_url()
    port = int(dead.rsplit(":", 1)[1])
    s = register([dead, standin.url], name="group")
    async with sdk(base, jp_serverapp) as client:
        for _ in range(4):
            await client.chat.completions.create(model="group", messages=[])
        assert ext.groups[s.id].view()["replicas"][0]["in_service"] is False
        revived = StandIn(port)
        try:
            await asyncio.sleep(0.3)  # replica_recheck_interval is 0.2 s in these tests
            for _ in range(3):
                await client.chat.completions.create(model="group", messages=[])
                await asyncio.sleep(0.1)
            assert ext.groups[s.id].view()["replicas"][0]["in_service"] is True
            assert any(x["path"] == "/v1/chat/completions" for x in revived.seen)
        finally:
            revived.close()


async def test_per_session_live_ready_and_model_views(jp_fetch, ext, register, standin):
    s = register([standin.url], name="chat-a")
    for view in ("live", "ready"):
        r = await jp_fetch("hpcserve", "api", "sessions", s.id, "v1", view)
        body = json.loads(r.body)
        assert r.code == 200 and body[view] is True
    ready = json.loads((await jp_fetch("hpcserve", "api", "sessions", s.id, "v1", "ready")).body)
    assert ready["replicas"][0]["healthy"] is True
    info = json.loads((await jp_fetch("hpcserve", "api", "sessions", s.id, "v1", "model")).body)
    assert info["served_model"] == "standin-model"
    assert info["engine"]["data"][0]["id"] == "standin-model"
    assert info["admission"]["max_inflight_per_replica"] == 16
    await ext.manager.stop(s.id)
    for view in ("live", "ready"):
        r = await jp_fetch("hpcserve", "api", "sessions", s.id, "v1", view, raise_error=False)
        assert r.code == 503 and json.loads(r.body)[view] is False


async def test_a_stream_asking_for_usage_gets_it_when_the_engine_sends_none(
        base, ext, jp_serverapp, register, standin):
    """The stand-in sends no usage chunk and its /extras/tokenize (the declared tokenizer of
    the session's backend) answers no count: the gateway asks it, then counts the deltas."""
    s = register([standin.url], name="chat-a")
    async with sdk(base, jp_serverapp) as client:
        for create, kind in ((client.chat.completions.create, "chat.completion.chunk"),
                             (client.completions.create, "text_completion")):
            extra = ({"messages": [{"role": "user", "content": "hi"}]}
                     if kind.startswith("chat") else {"prompt": "hi"})
            stream = await create(model="chat-a", stream=True,
                                  stream_options={"include_usage": True}, **extra)
            chunks = [c async for c in stream]
            assert [c.usage is not None for c in chunks] == [False] * 6 + [True]
            last = chunks[-1]
            assert last.choices == [] and last.model == "chat-a" and last.object == kind
            assert last.id == "x" and last.created == 1  # the stream's own
            assert (last.usage.prompt_tokens, last.usage.completion_tokens,
                    last.usage.total_tokens) == (0, 6, 6)
        asked = [x for x in standin.seen if x["path"] == "/extras/tokenize"]
        assert asked and {x["headers"]["Authorization"] for x in asked} == {
            f"Bearer {ext.manager.api_key(s)}"}
        # no usage asked for: nothing added, no tokenizer asked
        stream = await client.chat.completions.create(
            model="chat-a", messages=[{"role": "user", "content": "hi"}], stream=True)
        assert [c.usage for c in [c async for c in stream]] == [None] * 6
        assert [x for x in standin.seen if x["path"] == "/extras/tokenize"] == asked
