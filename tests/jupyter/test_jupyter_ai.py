"""Jupyter AI on a session, in a real `jupyter server` that also runs jupyter-ai 3.2's own
extensions: `use in Jupyter AI` writes an entry Jupyternaut's config manager (in the server)
serves back; Jupyternaut's call path (its ChatLiteLLM -> litellm.acompletion, streaming, its
cache_control injection, tools in the body) streams from a real llama.cpp session through the
gateway with the entry's gateway key; that key opens no other route; the entry and its key go
when it is removed and when the session stops. The CLI and the magic go the same way."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import httpx
import pytest
from test_jupyter_real_server import TOKEN, JupyterServer, free_port, wait_ready

from waiting import until

pytest.importorskip("jupyter_ai_jupyternaut", reason="the jupyter-ai extra is not installed")

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]


def chat(model_id: str, params: dict, *, provider_tools: bool = True) -> list:
    """Jupyternaut's own chat model as its persona builds it (get_agent), with a tool bound
    and a system message (which its ChatLiteLLM marks for prompt caching)."""
    from jupyter_ai_jupyternaut.jupyternaut.chat_models import ChatLiteLLM
    from langchain_core.tools import tool

    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    model = ChatLiteLLM(**params, model=model_id, streaming=True, max_tokens=12,
                        temperature=0)
    bound = model.bind_tools([add]) if provider_tools else model

    async def run() -> list:
        return [c async for c in bound.astream(
            [("system", "You are a helpful assistant."), ("user", "Say hello.")])]

    return asyncio.run(run())


def jupyternaut_config(server: JupyterServer) -> dict:
    """Jupyternaut's view of its settings, from its own REST API in the server."""
    r = server.http.get("api/jupyternaut/config")
    assert r.status_code == 200, r.text
    return r.json()


def engine_requests(server: JupyterServer, sid: str) -> int:
    """The chat requests the session's engine has logged (llama.cpp's access log)."""
    r = server.http.get(f"hpcserve/api/sessions/{sid}/logs", params={"tail": 0})
    assert r.status_code == 200, r.text
    return r.text.count("POST /v1/chat/completions")


def ready_session(server: JupyterServer, name: str) -> str:
    """A SmolLM2 chat session on the local target, launched over REST; its id once ready."""
    r = server.http.post("hpcserve/api/sessions",
                         json={"recipe": "smollm2-135m", "target": "local", "name": name})
    assert r.status_code == 201, r.text
    wait_ready(server, r.json()["id"])
    return r.json()["id"]


def test_a_session_in_jupyter_ai_end_to_end(tmp_path, isolated_home):
    server = JupyterServer(tmp_path, free_port())
    sid = None
    try:
        sid = ready_session(server, "m1")

        r = server.http.post(f"hpcserve/api/sessions/{sid}/jupyter-ai", json={"default": True})
        assert r.status_code == 200, r.text
        done = r.json()
        assert done["model_id"] == "hosted_vllm/m1"
        assert done["api_base"] == server.url + "hpcserve/v1"

        # Jupyter AI's own config manager (in the server) reads the entry.
        config = jupyternaut_config(server)
        [entry] = [m for m in config["custom_models"] if m["id"] == done["entry_id"]]
        assert entry["name"] == "m1" and entry["model_id"] == "hosted_vllm/m1"
        assert config["model_provider_id"] == "hosted_vllm/m1"
        key = entry["params"]["api_key"]
        assert key.startswith("hsk_") and key != TOKEN  # a gateway key, never the token
        assert TOKEN not in (tmp_path / "data" / "jupyter_ai" / "config.json").read_text()

        # Jupyternaut's call path streams from the session through the gateway.
        # What the code controls: the request reached the engine and a stream came back (not
        # the model's words, which differ between CPUs).
        before = engine_requests(server, sid)
        chunks = chat(entry["model_id"], entry["params"])
        assert len(chunks) >= 2 and engine_requests(server, sid) == before + 1
        # A user's hand-made `openai/` entry: LiteLLM then adds cache_control to the system
        # message; the engine gets the request all the same.
        assert chat("openai/m1", entry["params"])
        assert engine_requests(server, sid) == before + 2

        # The key opens the gateway only.
        gw = {"Authorization": f"Bearer {key}"}
        for method, path in (("GET", "api/contents"), ("GET", "api/kernels"),
                             ("GET", "hpcserve/api/sessions"), ("GET", "hpcserve/api/keys"),
                             ("GET", "api/jupyternaut/config"),
                             ("POST", f"hpcserve/api/sessions/{sid}/jupyter-ai")):
            refused = httpx.request(method, server.url + path, headers=gw, timeout=10,
                                    trust_env=False)
            assert refused.status_code in (401, 403), (path, refused.status_code)
        assert httpx.get(server.url + "hpcserve/v1/models", headers=gw, timeout=10,
                         trust_env=False).status_code == 200

        # Removing it takes the entry away and revokes the key.
        r = server.http.delete(f"hpcserve/api/sessions/{sid}/jupyter-ai")
        assert r.status_code == 200 and r.json()["removed"] is True
        config = jupyternaut_config(server)
        assert all(m["id"] != done["entry_id"] for m in config["custom_models"])
        assert config.get("model_provider_id") is None
        assert httpx.get(server.url + "hpcserve/v1/models", headers=gw, timeout=10,
                         trust_env=False).status_code == 401
        import litellm

        with pytest.raises(litellm.AuthenticationError):
            chat(entry["model_id"], entry["params"])

        # Registered again, then the session stops: the entry and its key go by themselves.
        done = server.http.post(f"hpcserve/api/sessions/{sid}/jupyter-ai").json()
        key = next(m for m in jupyternaut_config(server)["custom_models"]
                   if m["id"] == done["entry_id"])["params"]["api_key"]
        assert server.http.delete(f"hpcserve/api/sessions/{sid}").status_code == 200
        sid = None
        assert until(lambda: all(m["id"] != done["entry_id"] for m in
                                 jupyternaut_config(server)["custom_models"]), 30)
        keys = server.http.get("hpcserve/api/keys").json()["keys"]
        assert [k["revoked_at"] is not None for k in keys
                if k["label"] == f"jupyter-ai:{done['session_id']}"] == [True, True]
        assert httpx.get(server.url + "hpcserve/v1/models",
                         headers={"Authorization": f"Bearer {key}"}, timeout=10,
                         trust_env=False).status_code == 401
        assert key not in server.logs()
    finally:
        if sid is not None and server.proc.poll() is None:
            server.http.delete(f"hpcserve/api/sessions/{sid}")
        server.sigterm()


def test_refusals_are_clear(tmp_path, isolated_home):
    server = JupyterServer(tmp_path, free_port())
    try:
        r = server.http.post("hpcserve/api/sessions/nosuch/jupyter-ai")
        assert r.status_code == 404 and "nosuch" in r.json()["error"]
        r = server.http.post("hpcserve/api/sessions/nosuch/jupyter-ai", json={"default": 3})
        assert r.status_code == 400
        r = server.http.post("hpcserve/api/sessions",
                             json={"recipe": "smollm2-135m", "target": "local", "name": "e1"})
        sid = r.json()["id"]
        assert server.http.delete(f"hpcserve/api/sessions/{sid}").status_code == 200
        r = server.http.post(f"hpcserve/api/sessions/{sid}/jupyter-ai")
        assert r.status_code == 409 and "stopped" in r.json()["error"], r.text
        assert server.http.get("hpcserve/api/keys").json()["keys"] == []  # nothing left over
    finally:
        server.sigterm()


def test_cli_without_a_server_says_what_to_do(tmp_path, isolated_home):
    env = {**os.environ, "HPCSERVE_EMBEDDED": "1"}
    done = subprocess.run([sys.executable, "-m", "hpcserve_jupyter.cli", "ai", "m1"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert "Jupyter server" in done.stderr and "HPCSERVE_SERVER_URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_and_magic_through_the_server(tmp_path, isolated_home):
    """`hpcserve ai` (remote facade) and `%serve ai` in IPython reach the same REST route."""
    server = JupyterServer(tmp_path, free_port())
    sid = None
    try:
        sid = ready_session(server, "c1")
        env = {**os.environ, "HPCSERVE_SERVER_URL": server.url, "HPCSERVE_SERVER_TOKEN": TOKEN}
        env.pop("HPCSERVE_EMBEDDED", None)
        cli = [sys.executable, "-m", "hpcserve_jupyter.cli", "ai"]
        done = subprocess.run([*cli, "c1", "--json"], capture_output=True, text=True, env=env,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        entry_id = json.loads(done.stdout)["entry_id"]
        assert any(m["id"] == entry_id for m in jupyternaut_config(server)["custom_models"])
        done = subprocess.run([*cli, "c1", "--remove"], capture_output=True, text=True, env=env,
                              timeout=60)
        assert done.returncode == 0 and "removed from Jupyter AI" in done.stdout

        from IPython.testing import globalipapp

        from hpcserve_jupyter.magics.core import magics_of
        from hpcserve_jupyter.remote import RemoteHpcserve

        globalipapp.start_ipython()  # once per process; later calls return None
        shell = globalipapp.get_ipython()
        assert shell.run_cell("%load_ext hpcserve_jupyter").success
        magics = magics_of(shell)
        with RemoteHpcserve(server.url, TOKEN) as facade:
            magics.facade, magics.rich, magics.current = facade, False, None
            out = shell.run_line_magic("serve", "ai c1 --default")
            assert "in Jupyter AI's model picker" in out.text()
        config = jupyternaut_config(server)
        assert config["model_provider_id"] == "hosted_vllm/c1"
    finally:
        if sid is not None:
            server.http.delete(f"hpcserve/api/sessions/{sid}")
        server.sigterm()


def test_stale_entries_are_removed_when_the_server_starts(tmp_path, isolated_home):
    """A session that ended while no server ran: its entry goes at the next start."""
    from hpcserve_jupyter import jupyterai

    path = tmp_path / "data" / "jupyter_ai" / "config.json"
    jupyterai.register(jupyterai.AiModel(session_id="dead0001", name="gone",
                                         api_base="http://x/hpcserve/v1", api_key="hsk_x"),
                       default=True, path=path)
    server = JupyterServer(tmp_path, free_port())
    try:
        config = jupyternaut_config(server)
        assert all(not m["id"].startswith("custom-hpcserve-dead0001/")
                   for m in config["custom_models"])
        assert config.get("model_provider_id") is None
    finally:
        server.sigterm()
