"""The OpenAI-compatible client against the real llama.cpp server."""

from __future__ import annotations

import asyncio

import pytest

from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.client import AsyncClient, Client
from hpcserve_jupyter.errors import EngineError, NotReady

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import os

    os.environ["HPCSERVE_HOME"] = str(tmp_path_factory.mktemp("client-home"))
    h = Hpcserve(poll_interval=0.5)
    s = h.launch("smollm2-135m", timeout=120)
    assert s.state == "ready", s.log_tail
    yield s.endpoints[0], h.manager.api_key(s), s.model
    h.stop(s.id)
    h.close()


def test_models_chat_complete_and_stream(served):
    url, key, model = served
    with Client(url, api_key=key) as c:
        assert c.models() == [model]
        answer = c.chat(model, "What is 2+2?", temperature=0, max_tokens=16)
        assert answer.strip()
        assert c.complete(model, "The capital of France is", temperature=0, max_tokens=8)
        deltas = list(c.stream_chat(model, "What is 2+2?", temperature=0, max_tokens=16))
        assert len(deltas) > 2 and "".join(deltas) == answer
        system = c.chat(model, "Who are you?", system="You are a pirate.", max_tokens=8)
        assert system


def test_async_client_streams(served):
    url, key, model = served

    async def go() -> list[str]:
        async with AsyncClient(url, api_key=key) as c:
            assert await c.models() == [model]
            return [d async for d in c.stream_chat(model, "Count: 1, 2, 3,", max_tokens=12,
                                                   temperature=0)]

    deltas = asyncio.run(go())
    assert len(deltas) > 2


def test_engine_errors_surface_with_the_engines_message(served):
    url, key, model = served
    with Client(url, api_key=key) as c, pytest.raises(EngineError) as exc:
        c.chat(model, "hi", max_tokens="lots")
    # llama-cpp-python answers a type error with 500 and pydantic's message: shown as is.
    assert exc.value.status_code == 500 and "max_tokens" in str(exc.value)
    with Client(url, api_key=key) as c, pytest.raises(EngineError) as exc:
        c.chat(model, "word " * 5000, max_tokens=4)
    assert exc.value.status_code == 400 and "maximum context length is 2048" in str(exc.value)
    with Client(url, api_key="wrong") as c, pytest.raises(EngineError) as exc:
        c.models()
    assert exc.value.status_code == 401


def test_unreachable_endpoint_is_not_ready():
    with Client("http://127.0.0.1:9", api_key="k") as c, pytest.raises(NotReady,
                                                                     match="cannot reach"):
        c.models()
