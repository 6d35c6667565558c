"""Real `llama-server` (llama.cpp's C++ server, built from the source llama-cpp-python 0.3.36
vendors by scripts/setup-llama-server.sh) serving the shipped SmolLM2 GGUF file through the
embedded facade on the local target: its command line, the key kept out of `ps`, prompts, the
tokenizer route the gateway counts with, and the Prometheus counters of GET /metrics rising.

Without the built binary these tests skip, except on CI (CI=true), where it is a failure: `make
test` builds it. Nothing here reads the model's words (greedy answers differ between CPUs): the
assertions are on token counts the engine reports, its counters, and session state.

    bash scripts/setup-llama-server.sh
    .venv/bin/python -m pytest tests/backends/test_llama_server_real.py
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from real_engines import REPO, engine_of, gguf_path, session_processes, survivors, unavailable

from facade_fixtures import make_facade
from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.recipes import Catalog, builtin_recipe_dir
from hpcserve_jupyter.sessions import Session, State
from llama_server_recipe import BINARY, RECIPE, write_recipe

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]

SAMPLE = REPO / "tests" / "metrics" / "samples" / "llama-server.txt"
READY_TIMEOUT = 180.0
QUESTIONS = ["What is the capital of France?", "Name three colours of the rainbow."]
METRIC = re.compile(r"^(llamacpp:[a-z_]+) (\S+)$")


@dataclass
class Served:
    hp: Hpcserve
    session: Session
    key: str
    model: Path

    @property
    def url(self) -> str:
        return self.session.endpoints[0]

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = httpx.post(f"{self.url}{path}", json=body, timeout=120, trust_env=False,
                            headers={"Authorization": f"Bearer {self.key}"})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def metrics(self) -> dict[str, float]:
        return parse(self.scrape())

    def scrape(self) -> str:
        answer = httpx.get(f"{self.url}/metrics", timeout=30, trust_env=False,
                           headers={"Authorization": f"Bearer {self.key}"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/plain")
        return answer.text


def parse(text: str) -> dict[str, float]:
    """The `llamacpp:` samples of a Prometheus text (the project's parsers are tested apart)."""
    return {m.group(1): float(m.group(2)) for line in text.splitlines()
            if (m := METRIC.match(line))}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if not (BINARY.is_file() and BINARY.stat().st_mode & 0o111):
        unavailable(f"llama-server is not built ({BINARY} is missing); build it with "
                    f"bash scripts/setup-llama-server.sh")
    model = gguf_path()
    home = tmp_path_factory.mktemp("llama-server")
    # the binary found as a user would: $LLAMA_SERVER (set below), not named in the recipe
    catalog = Catalog([builtin_recipe_dir(), write_recipe(home / "recipes", name_binary=False)])
    with make_facade(home / "state", catalog=catalog) as hp:
        with pytest.MonkeyPatch.context() as mp:  # how a user points at a build outside PATH
            mp.setenv("LLAMA_SERVER", str(BINARY))
            session = hp.launch(RECIPE, timeout=READY_TIMEOUT)
        if session.state != State.READY:
            pytest.fail(f"llama-server did not get ready: {session.state} {session.reason}\n"
                        f"{hp.logs(session.id, tail=40)}", pytrace=False)
        yield Served(hp, session, hp.manager.api_key(session), model)


def test_the_engine_runs_the_backends_command_line_without_the_key(served: Served) -> None:
    engine = engine_of(served.session.id)
    port = served.url.rsplit(":", 1)[1]
    assert engine.cmdline() == [
        str(BINARY), "--model", str(served.model), "--alias", RECIPE,
        "--host", "127.0.0.1", "--port", port, "--metrics", "--n-gpu-layers", "0",
        "--ctx-size", "2048"]
    # The key reaches the engine through its environment only (llama.cpp reads LLAMA_API_KEY).
    assert engine.environ()["LLAMA_API_KEY"] == served.key
    assert all(served.key not in arg for arg in engine.cmdline())
    refused = httpx.get(f"{served.url}/v1/models", timeout=30, trust_env=False)
    assert refused.status_code == 401
    assert httpx.get(f"{served.url}/metrics", timeout=30, trust_env=False).status_code == 401
    listed = httpx.get(f"{served.url}/v1/models", timeout=30, trust_env=False,
                       headers={"Authorization": f"Bearer {served.key}"}).json()
    assert [m["id"] for m in listed["data"]] == [RECIPE]


def test_two_prompts_raise_the_prometheus_counters(served: Served) -> None:
    before = served.metrics()
    usages = []
    for question in QUESTIONS:
        answer = served.post("/v1/chat/completions", {
            "model": RECIPE, "messages": [{"role": "user", "content": question}],
            "max_tokens": 12, "temperature": 0})
        usages.append(answer["usage"])
        assert 1 <= answer["usage"]["completion_tokens"] <= 12
        assert answer["usage"]["prompt_tokens"] >= 1
    after = served.metrics()

    def rise(name: str) -> float:
        return after[f"llamacpp:{name}"] - before[f"llamacpp:{name}"]

    generated = sum(u["completion_tokens"] for u in usages)
    prompted = sum(u["prompt_tokens"] for u in usages)
    # Every generated token counted once; every prompt token either evaluated or reused from
    # the prompt cache (the chat template's common start is cached after the first prompt).
    assert rise("tokens_predicted_total") == generated
    assert rise("prompt_tokens_total") >= 1
    assert rise("prompt_tokens_total") + rise("prompt_tokens_cached_total") == prompted
    assert after["llamacpp:requests_processing"] == 0
    assert after["llamacpp:requests_deferred"] == 0
    assert served.hp.status(served.session.id).state == State.READY


def test_the_recorded_sample_has_the_metrics_this_build_serves(served: Served) -> None:
    """tests/metrics/samples/llama-server.txt was scraped from this build: its first line names
    the build, and it holds exactly the metrics the running server exposes."""
    live = served.scrape()
    recorded = SAMPLE.read_text(encoding="utf-8")
    version = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True,
                             timeout=60)
    build = re.search(r"^version: (.+)$", version.stdout + version.stderr, re.MULTILINE)
    assert build, version.stderr
    assert recorded.startswith("#") and build.group(1) in recorded.splitlines()[0]
    assert set(parse(recorded)) == set(parse(live))
    types = {line for line in live.splitlines() if line.startswith("# TYPE")}
    assert types == {line for line in recorded.splitlines() if line.startswith("# TYPE")}


def test_the_tokenizer_route_counts_a_prompt_as_the_engine_does(served: Served) -> None:
    """What the gateway's usage chunk relies on (Backend.token_counter): POST /tokenize counts
    a text's tokens without special tokens; a completion of that text reports as many prompt
    tokens plus those the tokenizer adds ("" tokenized with special tokens)."""
    from hpcserve_jupyter.backends import get_backend

    route = get_backend("llama-server").token_counter.text  # type: ignore[union-attr]
    text = "The quick brown fox jumps over the lazy dog."
    tokens = served.post(route.path, {route.field: text})[route.answer]
    added = served.post(route.path, {route.field: "", "add_special": True})[route.answer]
    assert len(tokens) >= 5 and all(isinstance(t, int) for t in tokens)
    completion = served.post("/v1/completions", {"model": RECIPE, "prompt": text,
                                                 "max_tokens": 1, "temperature": 0})
    assert completion["usage"]["prompt_tokens"] == len(tokens) + len(added)


def test_stop_ends_the_engine(served: Served) -> None:
    runner = engine_of(served.session.id).parent()
    assert runner is not None
    procs = session_processes((runner.pid, runner.create_time()), served.session.id)
    assert procs
    stopped = served.hp.stop(served.session.id)
    assert stopped.state == State.STOPPED
    assert survivors(procs) == []
