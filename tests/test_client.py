"""The OpenAI-compatible client against the real llama.cpp server."""

from __future__ import annotations

import asyncio

import httpx
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


def completion_tokens(url: str, key: str, body: dict) -> int:
    """How many tokens the engine itself says it generated for `body` (non-streamed), so
    streaming checks follow the engine's count instead of guessing the answer's length."""
    response = httpx.post(f"{url.rstrip('/')}/v1/chat/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {key}"})
    response.raise_for_status()
    return response.json()["usage"]["completion_tokens"]


def test_models_chat_complete_and_stream(served):
    """Nothing here reads the model's words (they differ between CPUs): answers are non-empty,
    and the streamed deltas add up to the same greedy answer in more than one piece when the
    engine generated more than one token."""
    url, key, model = served
    question = [{"role": "user", "content": "What is 2+2?"}]
    with Client(url, api_key=key) as c:
        assert c.models() == [model]
        answer = c.chat(model, question, temperature=0, max_tokens=16)
        assert answer.strip()
        assert c.complete(model, "The capital of France is", temperature=0, max_tokens=8)
        deltas = list(c.stream_chat(model, question, temperature=0, max_tokens=16))
        assert "".join(deltas) == answer
        generated = completion_tokens(url, key, {"model": model, "messages": question,
                                                 "temperature": 0, "max_tokens": 16})
        assert 1 <= generated <= 16
        assert len(deltas) > 1 or generated == 1, (generated, deltas)
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
    generated = completion_tokens(url, key, {
        "model": model, "messages": [{"role": "user", "content": "Count: 1, 2, 3,"}],
        "max_tokens": 12, "temperature": 0})
    assert deltas and all(isinstance(d, str) and d for d in deltas)
    assert len(deltas) > 1 or generated == 1, (generated, deltas)


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
