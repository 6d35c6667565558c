"""Real `transformers serve` (transformers[serving] on the CPU build of torch) launched from the
`smollm2-135m-hf` recipe by a real Jupyter server on a local target, prompted through the
session's endpoint, the server's proxy and its OpenAI-compatible gateway, then stopped.

transformers runs from its own environment, <repo>/.venv-transformers, made by
scripts/setup-engine-envs.sh (`make engine-envs`). Without it these tests skip, except on CI
(CI=true), where a missing environment is a failure. The model is the SmolLM2 Hugging Face
checkpoint of tests/backends/real_engines.py (converted from the shipped GGUF file, offline).

Two habits of this engine shape the code under test: it answers only to the model name it was
started with (the directory's path; any other `model` gets 400), so that is the session's model
and what the gateway sends; and its streams end without `data: [DONE]`. Nothing here reads the
model's words (greedy answers differ between CPUs).

    scripts/setup-engine-envs.sh transformers
    .venv/bin/python -m pytest tests/backends/test_transformers_real.py
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from real_engines import (
    TOKEN,
    JupyterServer,
    engine_of,
    engine_python,
    hf_checkpoint,
    jupyter_with_target,
    runner_of,
    session_processes,
    survivors,
)

from hpcserve_jupyter.client import Client
from hpcserve_jupyter.remote import RemoteHpcserve
from hpcserve_jupyter.resolve import resolve
from hpcserve_jupyter.sessions import Session, State
from hpcserve_jupyter.spec import HOST, PORT, render_argv

pytestmark = pytest.mark.timeout(900)

RECIPE = "smollm2-135m-hf"
TARGET = "local-transformers"
SETUP = "create it with scripts/setup-engine-envs.sh transformers"
READY_TIMEOUT = 300.0
QUESTION = [{"role": "user", "content": "Write two sentences about the sea."}]


def overrides(model: Path) -> dict[str, Any]:
    return {"model": str(model), "env.HF_HUB_OFFLINE": "1"}


class Served:
    def __init__(self, server: JupyterServer, hp: RemoteHpcserve, session: Session,
                 python: Path, model: Path) -> None:
        self.server, self.hp, self.session = server, hp, session
        self.python, self.model = python, model

    @property
    def gateway(self) -> str:
        return f"{self.server.url}hpcserve/v1"

    def describe(self) -> str:
        current = self.hp.status(self.session.id)
        return (f"session {current.name} is {current.state}: {current.reason}\n"
                f"--- engine log ---\n{self.hp.logs(current.id, tail=40)}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    python = engine_python(".venv-transformers", SETUP)
    model = hf_checkpoint(python, tmp_path_factory.mktemp("smollm2-hf"), SETUP)
    home = tmp_path_factory.mktemp("transformers")
    with jupyter_with_target(home, TARGET, python) as (server, hp):
        session = hp.launch(RECIPE, backend="transformers", on=TARGET, wait=True,
                            timeout=READY_TIMEOUT, **overrides(model))
        served = Served(server, hp, session, python, model)
        if session.state != State.READY:
            pytest.fail(f"transformers did not get ready\n{served.describe()}", pytrace=False)
        yield served


def completion(url: str, model: str, headers: dict[str, str] | None = None,
               **params: Any) -> httpx.Response:
    body = {"model": model, "messages": QUESTION, "max_tokens": 24, "temperature": 0, **params}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120,
                      trust_env=False)


def sse_data(url: str, body: dict[str, Any], headers: dict[str, str]) -> list[str]:
    """The `data:` lines of a streamed answer, raw."""
    with httpx.stream("POST", url, json=body, headers=headers, timeout=120,
                      trust_env=False) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def test_the_command_line_that_runs_is_the_backends(served: Served) -> None:
    engine = engine_of(served.session.id)
    port = served.session.endpoints[0].rsplit(":", 1)[1]
    spec = resolve(RECIPE, "transformers", overrides(served.model))
    argv = render_argv(spec, {PORT: port, HOST: "127.0.0.1"})
    # Spelled out too, so a backend change shows here as the exact flag that moved.
    assert argv == ["transformers", "serve", str(served.model), "--host", "127.0.0.1",
                    "--port", port, "--device", "cpu", "--dtype", "float32"]
    # `transformers` found beside the target's python; a console script run by that python.
    assert engine.cmdline() == [str(served.python), str(served.python.parent / "transformers"),
                                *argv[1:]]
    assert engine.environ().get("HF_HUB_OFFLINE") == "1"


def test_the_sessions_model_is_the_name_the_engine_serves(served: Served) -> None:
    session, url = served.session, served.session.endpoints[0]
    assert session.model == str(served.model)
    engine_models = httpx.get(f"{url}/v1/models", timeout=30, trust_env=False).json()
    assert [m["id"] for m in engine_models["data"]] == [session.model]
    assert served.hp.models(session.id) == [session.model]  # through the proxy
    # Why the recipe's name cannot be sent: the engine refuses any other model name.
    assert completion(url, RECIPE).status_code == 400
    answer = completion(url, session.model)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] >= 1
    # The gateway lists the session by its name and routes that name to the served one.
    auth = {"Authorization": f"token {TOKEN}"}
    cards = httpx.get(f"{served.gateway}/models", headers=auth, timeout=30,
                      trust_env=False).json()["data"]
    assert [(c["id"], c["served_model"]) for c in cards] == [(session.name, session.model)]


def test_streamed_chat_through_the_gateway(served: Served) -> None:
    session = served.session
    auth = {"Authorization": f"token {TOKEN}"}
    whole = completion(served.gateway.removesuffix("/v1"), session.name, auth).json()
    generated = whole["usage"]["completion_tokens"]
    # The engine got its own served name (the gateway routes the session name to it, see
    # above); the answer names the model as the client asked for it (issue 17).
    assert whole["model"] == session.name
    assert 1 <= generated <= 24

    # The raw stream: chunks with a finish_reason at the end, and no [DONE] after it.
    body = {"model": session.name, "messages": QUESTION, "max_tokens": 24, "temperature": 0,
            "stream": True}
    data = sse_data(f"{served.gateway}/chat/completions", body, auth)
    chunks = [json.loads(d) for d in data]
    assert "[DONE]" not in data
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert {c["model"] for c in chunks} == {session.name}

    # The project's client ends such a stream cleanly, with the same greedy answer.
    with Client(served.gateway, api_key=TOKEN) as client:
        deltas = list(client.stream_chat(session.name, QUESTION, max_tokens=24,
                                         temperature=0))
    assert all(deltas)
    assert "".join(deltas) == whole["choices"][0]["message"]["content"]
    assert len(deltas) > 1 or generated == 1, (generated, deltas)

    # And so does the official openai SDK.
    sdk = openai.OpenAI(base_url=served.gateway, api_key=TOKEN, max_retries=0)
    stream = sdk.chat.completions.create(model=session.name, messages=QUESTION,
                                         max_tokens=24, temperature=0, stream=True)
    sdk_deltas = [c.choices[0].delta.content for c in stream
                  if c.choices and c.choices[0].delta.content]
    assert sdk_deltas == deltas


def test_streamed_chat_through_the_proxy(served: Served) -> None:
    deltas = list(served.hp.stream(served.session.id, QUESTION, max_tokens=8, temperature=0))
    assert deltas and all(deltas)
    assert served.hp.status(served.session.id).state == State.READY


def test_stop_leaves_no_transformers_process(served: Served) -> None:
    runner = runner_of(served.session.id)
    tree = [runner, *runner.children(recursive=True)]
    mine = (runner.pid, runner.create_time())
    assert {p.pid for p in tree} == {p.pid for p in session_processes(mine, served.session.id)}

    stopped = served.hp.stop(served.session.id)
    assert stopped.state == State.STOPPED, stopped.reason
    assert not survivors(tree), "still running after stop"
    assert not session_processes(mine, served.session.id)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{served.session.endpoints[0]}/health", timeout=5, trust_env=False)
