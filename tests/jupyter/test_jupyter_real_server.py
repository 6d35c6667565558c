"""End to end with a real `jupyter server` subprocess and the real llama.cpp engine: launch over
REST, stream through the proxy and through the gateway with the openai SDK, stop the server
(SIGTERM), start it again, find the session still ready, prompt it again, stop it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from hpcserve_jupyter.remote import RemoteHpcserve
from hpcserve_jupyter.secrets import master_key, session_api_key

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    def __init__(self, tmp: Path, port: int, *args: str) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        env = dict(os.environ)  # HPCSERVE_HOME etc. from the autouse fixture
        env.update(JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), JUPYTER_DATA_DIR=str(tmp / "data"),
                   JUPYTER_CONFIG_DIR=str(tmp / "config"),
                   JUPYTER_CONFIG_PATH=str(REPO / "jupyter-config"))  # the shipped enable file
        root = tmp / "root"
        root.mkdir(exist_ok=True)
        self.log = open(tmp / f"server-{port}-{time.time():.0f}.log", "w")  # noqa: SIM115
        jupyter = Path(sys.executable).with_name("jupyter")
        self.proc = subprocess.Popen(
            [str(jupyter), "server", "--no-browser", "--allow-root", "--ip=127.0.0.1",
             f"--port={port}", "--ServerApp.port_retries=0", f"--ServerApp.token={TOKEN}",
             f"--ServerApp.root_dir={root}", "--HpcserveApp.poll_interval=0.5", *args],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, timeout=60, trust_env=False,
                                 headers={"Authorization": f"token {TOKEN}"})
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("hpcserve/api/recipes").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.logs()
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.2)

    def logs(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-3000:]

    def sigterm(self) -> int:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            self.log.close()


def wait_ready(server: JupyterServer, sid: str, timeout: float = 180) -> dict:
    """Follow the SSE event stream (no polling) until the session is ready."""
    deadline = time.monotonic() + timeout
    with server.http.stream("GET", "hpcserve/api/events", timeout=timeout) as r:
        for line in r.iter_lines():
            assert time.monotonic() < deadline, server.logs()
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            sessions = event.get("sessions") or [event.get("session")]
            for s in sessions:
                if s and s["id"] == sid:
                    assert s["state"] in ("pending", "starting", "ready"), s
                    if s["state"] == "ready":
                        return s
    raise AssertionError("the event stream ended")


def stream_through_proxy(server: JupyterServer, sid: str) -> tuple[list[str], float, float]:
    start = time.monotonic()
    first = None
    deltas = []
    body = {"messages": [{"role": "user", "content": "Write three sentences about the sea."}],
            "max_tokens": 48, "temperature": 0, "stream": True}
    with server.http.stream("POST", f"hpcserve/proxy/{sid}/v1/chat/completions",
                            json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                first = first or time.monotonic() - start
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                if delta:
                    deltas.append(delta)
    return deltas, first or 0.0, time.monotonic() - start


def test_real_jupyter_server_end_to_end(tmp_path, isolated_home):
    port = free_port()
    server = JupyterServer(tmp_path, port)
    sid = None
    try:
        r = server.http.post("hpcserve/api/sessions",
                             json={"recipe": "smollm2-135m", "target": "local"})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        session = wait_ready(server, sid)
        endpoint = session["endpoints"][0]

        deltas, first, total = stream_through_proxy(server, sid)
        assert len(deltas) > 5
        assert first < total - 0.05, (first, total)  # the first chunk came before the end

        client = openai.OpenAI(base_url=server.url + "hpcserve/v1", api_key=TOKEN,
                               max_retries=0)
        assert [m.id for m in client.models.list()] == [session["name"]]
        stream = client.chat.completions.create(
            model=session["name"], messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=16, temperature=0, stream=True)
        chunks = list(stream)
        sdk_deltas = [c.choices[0].delta.content for c in chunks
                      if c.choices and c.choices[0].delta.content]
        assert len(sdk_deltas) > 2
        assert {c.model for c in chunks} == {session["name"]}  # not the engine's own name
        # LangChain's max_completion_tokens: llama.cpp knows only max_tokens; the gateway
        # passes it on, so the engine stops at the limit (it ignored it before: 276 tokens).
        limited = client.chat.completions.create(
            model=session["name"], messages=[{"role": "user", "content": "Tell a story."}],
            max_completion_tokens=5, temperature=0)
        assert limited.usage.completion_tokens <= 5 and limited.model == session["name"]

        assert server.sigterm() == 0
        # The engine outlived the server: it still answers with the session's key.
        key = session_api_key(master_key(isolated_home), sid)
        models = httpx.get(endpoint + "/v1/models", headers={"Authorization": f"Bearer {key}"},
                           timeout=10, trust_env=False)
        assert models.status_code == 200

        server = JupyterServer(tmp_path, port)
        again = server.http.get(f"hpcserve/api/sessions/{sid}").json()
        assert again["state"] == "ready" and again["endpoints"] == session["endpoints"]
        answer = client.chat.completions.create(
            model=sid, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=8)
        assert answer.choices[0].message.content.strip()
        with RemoteHpcserve(server.url, TOKEN) as hp:
            assert hp.status(sid).state == "ready"
            assert hp.prompt(sid, "Name a colour.", max_tokens=8).strip()
            stopped = hp.stop(sid)
        assert stopped.state == "stopped"
        sid = None
        with pytest.raises(httpx.HTTPError):
            httpx.get(endpoint + "/v1/models", timeout=2, trust_env=False)
    finally:
        if server.proc.poll() is None:
            if sid is not None:
                server.http.delete(f"hpcserve/api/sessions/{sid}")
                sid = None
            server.sigterm()
        if sid is not None:  # the server is gone: stop the engine without it
            from hpcserve_jupyter.api import Hpcserve

            hp = Hpcserve(monitor=False)
            try:
                hp.stop(sid)
            finally:
                hp.close()
