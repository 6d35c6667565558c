"""P1: the hpcserve proxy against a direct connection and against jupyter-server-proxy, on one
Jupyter server (a real `jupyter server` subprocess with both extensions), with one client.

- Latency p50/p99 of a small request (GET /v1/models) to the real llama.cpp session
  (smollm2-135m): direct, through /hpcserve/proxy/{id}/ and through jupyter-server-proxy.
- Time to first streamed byte: a tiny local upstream streams server-sent events (first one at
  once, then one every 100 ms); and a streamed chat completion of the llama.cpp session.
  jupyter-server-proxy streams only when the client sends exactly `Accept: text/event-stream`
  (it buffers otherwise), so it is measured both ways.
- R10: 50 concurrent streamed prompts through the hpcserve proxy, 0 errors required.
- For scale, the floor of any authenticated Jupyter request on the same server and client:
  GET /api/status (Jupyter's own handler, no upstream at all).

Goal (issue 14): proxy overhead p50 <= 1.0 ms over direct and SSE first byte <= direct + 2 ms,
both ahead of jupyter-server-proxy in the same run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from common import concurrent_prompts, stats, write

TOKEN = "bench-token"
RUNS = 200
TTFB_RUNS = 15
CONCURRENT = 50
SSE_EVENTS, SSE_DELAY = 10, 0.1
FLOOR = "jupyter GET /api/status (auth, no upstream)"
OVERHEAD_GOAL_S, SSE_GOAL_S = 0.001, 0.002


# ---------------------------------------------------------------------- tiny SSE upstream


class _SSE(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if not self.path.startswith("/sse"):
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(SSE_EVENTS):
            if i:
                time.sleep(SSE_DELAY)
            data = f"data: {i}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


def start_upstream() -> tuple[ThreadingHTTPServer, int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SSE)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


# ---------------------------------------------------------------------- the Jupyter server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    """`jupyter server` with hpcserve_jupyter and jupyter-server-proxy, state in `tmp`."""

    def __init__(self, tmp: Path, *, proxy_servers: dict[str, Any] | None = None) -> None:
        self.tmp = tmp
        self.home = tmp / "hpcserve-home"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        config = tmp / "bench_config.py"
        config.write_text(f"c.ServerProxy.servers = {json.dumps(proxy_servers or {})}\n")
        env = dict(os.environ, HPCSERVE_HOME=str(self.home),
                   HPCSERVE_TARGETS=str(tmp / "targets.yaml"), HPCSERVE_RECIPES="",
                   JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), JUPYTER_DATA_DIR=str(tmp / "data"),
                   JUPYTER_CONFIG_DIR=str(tmp / "config"))
        (tmp / "root").mkdir(exist_ok=True)
        self.log = open(tmp / "server.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("jupyter")), "server", "--no-browser",
             "--allow-root", "--ip=127.0.0.1", f"--port={self.port}",
             "--ServerApp.port_retries=0", f"--ServerApp.token={TOKEN}",
             f"--ServerApp.root_dir={tmp / 'root'}", f"--config={config}",
             "--ServerApp.log_level=WARN"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, timeout=120, trust_env=False,
                                 headers={"Authorization": f"token {TOKEN}"})
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("hpcserve/api/recipes").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("jupyter server did not start:\n"
                                   + (tmp / "server.log").read_text()[-2000:])
            time.sleep(0.2)

    def launch(self, recipe: str = "smollm2-135m") -> dict[str, Any]:
        """Launch over REST and wait for `ready` on the event stream."""
        r = self.http.post("hpcserve/api/sessions", json={"recipe": recipe})
        r.raise_for_status()
        sid = r.json()["id"]
        with self.http.stream("GET", "hpcserve/api/events") as events:
            for line in events.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                for s in event.get("sessions") or [event.get("session")]:
                    if s and s["id"] == sid and s["state"] == "ready":
                        return s
                    if s and s["id"] == sid and s["state"] in ("failed", "stopped", "timeout"):
                        raise RuntimeError(f"launch failed: {s['reason']}\n{s['log_tail']}")
        raise RuntimeError("event stream ended")

    def api_key(self, sid: str) -> str:
        from hpcserve_jupyter.secrets import master_key, session_api_key

        return session_api_key(master_key(self.home), sid)

    def register(self, endpoint: str) -> str:
        """Record a READY session serving at `endpoint` in the server's store (shared SQLite),
        so the proxy reaches a non-engine upstream; returns its id."""
        import secrets as _secrets

        from hpcserve_jupyter.sessions import Session, State
        from hpcserve_jupyter.store import Store

        s = Session(id=_secrets.token_hex(4), name=f"upstream-{time.time_ns()}",
                    recipe="upstream", backend="llama-cpp", target="local", state=State.READY,
                    endpoints=[endpoint], model="upstream", spec={"health_path": "/"})
        store = Store(self.home / "sessions.db")
        try:
            store.insert(s, "created", "benchmark upstream")
        finally:
            store.close()
        return s.id

    def stop(self, sid: str) -> None:
        self.http.delete(f"hpcserve/api/sessions/{sid}")

    def close(self) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# ---------------------------------------------------------------------- measurements


def ttfb(client: httpx.Client, method: str, url: str, headers: dict[str, str],
         body: Any = None) -> tuple[float, float]:
    """(seconds to the first body byte, seconds to the end of the body)."""
    start = time.perf_counter()
    first = None
    with client.stream(method, url, headers=headers, json=body) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")
        for chunk in r.iter_raw():
            if chunk and first is None:
                first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start


def interleaved(cases: dict[str, Any], runs: int, start: int = 0) -> dict[str, list[Any]]:
    """Each case once per round, the order rotated from round to round: the first request
    after a pause (the server idle while the direct case ran) is slower, and a fixed order
    would give that slot to the same case every time."""
    out: dict[str, list[Any]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(start, start + runs):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            out[name].append(cases[name]())
    return out


def main() -> dict:
    upstream, up_port = start_upstream()
    with tempfile.TemporaryDirectory() as tmpdir:
        srv = JupyterServer(Path(tmpdir), proxy_servers={"sse-up": {"port": up_port}})
        sid = None
        try:
            session = srv.launch()
            sid = session["id"]
            endpoint = session["endpoints"][0]
            llama_port = int(endpoint.rsplit(":", 1)[1])
            key = srv.api_key(sid)
            ours = f"{srv.url}hpcserve/proxy/{sid}/"
            jsp = f"{srv.url}proxy/{llama_port}/"
            tok = {"Authorization": f"token {TOKEN}"}
            bearer = {"Authorization": f"Bearer {key}"}
            client = httpx.Client(timeout=120, trust_env=False)

            def get(url: str, headers: dict[str, str]) -> float:
                start = time.perf_counter()
                r = client.get(url, headers=headers)
                took = time.perf_counter() - start
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")
                return took

            # -- latency of a small request to the real engine
            cases = {
                "direct": lambda: get(endpoint + "/v1/models", bearer),
                "hpcserve proxy": lambda: get(ours + "v1/models", tok),
                "jupyter-server-proxy": lambda: get(f"{jsp}v1/models?token={TOKEN}", bearer),
                FLOOR: lambda: get(f"{srv.url}api/status", tok),
            }
            interleaved(cases, 10)  # warm-up: connections, imports
            latency = {k: stats(v) for k, v in interleaved(cases, RUNS).items()}

            # -- time to first byte of a slow SSE stream (tiny upstream). Behind our proxy it
            # is a session registered in the server's store (the proxy reaches registered
            # sessions only); a fresh one per round, as the monitor fails a session without a
            # target handle after 60 s.
            up = f"http://127.0.0.1:{up_port}"
            sse = {"Accept": "text/event-stream"}
            plain: dict[str, str] = {}
            sse_runs: dict[str, list[tuple[float, float]]] = {}
            for round_ in range(TTFB_RUNS):
                up_sid = srv.register(up)
                cases = {
                    "direct": lambda: ttfb(client, "GET", up + "/sse", plain),
                    "hpcserve proxy": lambda sid_=up_sid: ttfb(
                        client, "GET", f"{srv.url}hpcserve/proxy/{sid_}/sse", tok),
                    "jupyter-server-proxy (Accept: text/event-stream)": lambda: ttfb(
                        client, "GET", f"{srv.url}sse-up/sse?token={TOKEN}", sse),
                    "jupyter-server-proxy (no Accept header)": lambda: ttfb(
                        client, "GET", f"{srv.url}sse-up/sse?token={TOKEN}", plain),
                }
                for k, v in interleaved(cases, 1, start=round_).items():
                    sse_runs.setdefault(k, []).extend(v)
                srv.stop(up_sid)
            stream_ttfb = {k: {"first_byte": stats([f for f, _ in v]),
                               "whole_stream": stats([t for _, t in v])}
                           for k, v in sse_runs.items()}

            # -- time to first byte of a streamed chat completion (real engine)
            chat = {"messages": [{"role": "user", "content": "Name three rivers."}],
                    "max_tokens": 24, "temperature": 0, "stream": True}
            cases = {
                "direct": lambda: ttfb(client, "POST", endpoint + "/v1/chat/completions",
                                       bearer, chat),
                "hpcserve proxy": lambda: ttfb(client, "POST", ours + "v1/chat/completions",
                                               tok, chat),
                "jupyter-server-proxy (Accept: text/event-stream)": lambda: ttfb(
                    client, "POST", f"{jsp}v1/chat/completions?token={TOKEN}",
                    {**bearer, **sse}, chat),
                "jupyter-server-proxy (no Accept header)": lambda: ttfb(
                    client, "POST", f"{jsp}v1/chat/completions?token={TOKEN}", bearer, chat),
            }
            chat_runs = interleaved(cases, TTFB_RUNS)
            chat_ttfb = {k: {"first_byte": stats([f for f, _ in v]),
                             "whole_stream": stats([t for _, t in v])}
                         for k, v in chat_runs.items()}
            client.close()

            # -- R10: 50 concurrent streamed prompts through our proxy
            r10 = asyncio.run(concurrent_prompts(
                f"{srv.url}hpcserve/proxy/{sid}/", TOKEN, CONCURRENT))
        finally:
            if sid:
                srv.stop(sid)
            srv.close()
            upstream.shutdown()

    ms = 1000
    print(f"latency GET /v1/models on llama.cpp, {RUNS} interleaved runs (ms):")
    for k, v in latency.items():
        print(f"  {k:48} p50 {v['p50'] * ms:7.2f}  p99 {v['p99'] * ms:7.2f}  "
              f"mean {v['mean'] * ms:7.2f}")
    print(f"time to first byte, SSE upstream ({SSE_EVENTS} events, {SSE_DELAY * ms:.0f} ms "
          "apart) (ms):")
    for k, v in stream_ttfb.items():
        print(f"  {k:48} first byte p50 {v['first_byte']['p50'] * ms:7.1f}  p99 "
              f"{v['first_byte']['p99'] * ms:7.1f}   whole stream p50 "
              f"{v['whole_stream']['p50'] * ms:7.1f}")
    print("time to first byte, streamed chat completion on llama.cpp (ms):")
    for k, v in chat_ttfb.items():
        print(f"  {k:48} first byte p50 {v['first_byte']['p50'] * ms:7.1f}  p99 "
              f"{v['first_byte']['p99'] * ms:7.1f}   whole stream p50 "
              f"{v['whole_stream']['p50'] * ms:7.1f}")
    print(f"R10: {r10['concurrent']} concurrent streamed prompts through the hpcserve proxy: "
          f"{r10['errors']} errors, wall {r10['wall_s']:.1f} s, first event p50 "
          f"{r10['first_event_s']['p50']:.2f} s p99 {r10['first_event_s']['p99']:.2f} s"
          if r10["first_event_s"] else f"R10: {r10}")
    overhead = latency["hpcserve proxy"]["p50"] - latency["direct"]["p50"]
    jsp_overhead = latency["jupyter-server-proxy"]["p50"] - latency["direct"]["p50"]
    sse_first = {k: v["first_byte"]["p50"] for k, v in stream_ttfb.items()}
    sse_over = sse_first["hpcserve proxy"] - sse_first["direct"]
    jsp_sse = sse_first["jupyter-server-proxy (Accept: text/event-stream)"]
    goal = {
        "proxy_overhead_p50_s": round(overhead, 5), "overhead_goal_s": OVERHEAD_GOAL_S,
        "overhead_ok": overhead <= OVERHEAD_GOAL_S,
        "overhead_ahead_of_jupyter_server_proxy": overhead < jsp_overhead,
        "sse_first_byte_over_direct_s": round(sse_over, 5), "sse_goal_s": SSE_GOAL_S,
        "sse_ok": sse_over <= SSE_GOAL_S,
        "sse_ahead_of_jupyter_server_proxy": sse_first["hpcserve proxy"] < jsp_sse,
        "jupyter_auth_floor_over_direct_s": round(latency[FLOOR]["p50"]
                                                  - latency["direct"]["p50"], 5),
    }
    goal["met"] = all(goal[k] for k in ("overhead_ok", "overhead_ahead_of_jupyter_server_proxy",
                                        "sse_ok", "sse_ahead_of_jupyter_server_proxy"))
    result = {
        "latency_s": latency, "sse_upstream_ttfb_s": stream_ttfb, "chat_ttfb_s": chat_ttfb,
        "r10": {**r10, "goal_met": r10["errors"] == 0},
        "proxy_overhead_p50_s": round(overhead, 5), "goal": goal, "goal_met": goal["met"],
        "setup": {"server": "jupyter server subprocess with hpcserve_jupyter and "
                  "jupyter-server-proxy",
                  "client": "httpx.Client (keep-alive), interleaved, order rotated per round",
                  "engine": "llama.cpp smollm2-135m on CPU", "runs": RUNS,
                  "ttfb_runs": TTFB_RUNS,
                  "jupyter_server_proxy": "named server for the SSE upstream, /proxy/{port}/ "
                  "for the engine"},
    }
    print(f"hpcserve proxy overhead over direct (p50): {overhead * ms:.2f} ms "
          f"(jupyter-server-proxy {jsp_overhead * ms:.2f} ms, an authenticated Jupyter request "
          f"with no upstream {goal['jupyter_auth_floor_over_direct_s'] * ms:.2f} ms); SSE first "
          f"byte over direct {sse_over * ms:.1f} ms; goal {'met' if goal['met'] else 'NOT met'}")
    print("wrote", write("p1_proxy", result))
    return result


if __name__ == "__main__":
    main()
