"""A small real HTTP server standing in for an engine behind the proxy and the gateway.

It runs in a thread (its own sockets, not the test's event loop) and answers:
  /health, /v1/models                      200
  /v1/chat/completions, /v1/completions,   OpenAI-shaped answers; `"stream": true` gives SSE
  /v1/embeddings                           chunks `delay` seconds apart (body field)
  /sse?n=N&delay=S                         N server-sent events S seconds apart
  /slow?s=S                                answers after S seconds
  /broken                                  two events, then the connection drops
  /metrics                                 `metrics_text` as Prometheus text (404 if unset)
  anything else                            echoes method, path, query, headers and body
Request bodies sent chunked are read chunk by chunk; `first_chunk` is set when one arrives.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    # ------------------------------------------------------------------ plumbing

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunk = self.rfile.read(size)
                self.rfile.readline()
                data += chunk
                self.server.chunks.append((time.monotonic(), len(chunk)))
                self.server.first_chunk.set()
            return data
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json(self, data: Any, status: int = 200) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("X-Standin", "1")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _sse(self, events: list[str], delay: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, data in enumerate(events):
            if i:
                time.sleep(delay)
            payload = f"data: {data}\n\n".encode()
            self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # ------------------------------------------------------------------ routes

    def _route(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        body = self._body()
        self.server.seen.append({"method": self.command, "path": url.path,
                                 "headers": dict(self.headers.items())})
        if url.path == "/health":
            return self._json({"ok": True})
        if url.path == "/metrics":
            text = self.server.metrics_text
            if text is None:
                return self._json({"detail": "Not Found"}, 404)
            data = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        if url.path == "/v1/models":
            return self._json({"object": "list", "data": [{"id": self.server.model}]})
        if url.path == "/slow":
            time.sleep(float(query.get("s", "2")))
            return self._json({"slow": True})
        if url.path == "/broken":  # two events, then the connection drops mid-answer
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(2):
                payload = f"data: {i}\n\n".encode()
                self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
                self.wfile.flush()
            time.sleep(0.2)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if url.path == "/sse":
            n, delay = int(query.get("n", "5")), float(query.get("delay", "0.2"))
            return self._sse([json.dumps({"i": i}) for i in range(n)], delay)
        if url.path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            return self._openai(url.path, json.loads(body or b"{}"))
        return self._json({"method": self.command, "path": url.path, "query": url.query,
                           "headers": [[k, v] for k, v in self.headers.items()],
                           "body": body.decode("utf-8", "replace"), "body_len": len(body)})

    def _openai(self, path: str, req: dict[str, Any]) -> None:
        seen = {"model": req.get("model"), "auth": self.headers.get("Authorization"),
                "max_tokens": req.get("max_tokens"), "port": self.server.server_address[1]}
        if path.endswith("embeddings"):
            return self._json({"object": "list", "model": req.get("model"), "hpcserve": seen,
                               "data": [{"object": "embedding", "index": 0,
                                         "embedding": [0.1, 0.2, 0.3]}]})
        words = ["Hello", " from", " the", " stand", "-in", "."]
        chat = path.endswith("chat/completions")
        if req.get("stream"):
            delay = float(req.get("delay", 0.05))
            chunks = []
            for w in words:
                choice = ({"index": 0, "delta": {"content": w}, "finish_reason": None} if chat
                          else {"index": 0, "text": w, "finish_reason": None})
                chunks.append(json.dumps({
                    "id": "x", "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": 1, "model": req.get("model"), "choices": [choice],
                    "hpcserve": seen}))
            return self._sse([*chunks, "[DONE]"], delay)
        time.sleep(float(req.get("delay", 0)))
        text = "".join(words)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                   "finish_reason": "stop"} if chat
                  else {"index": 0, "text": text, "finish_reason": "stop"})
        return self._json({"id": "x", "object": "chat.completion" if chat else "text_completion",
                           "created": 1, "model": req.get("model"), "choices": [choice],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 6,
                                     "total_tokens": 7}, "hpcserve": seen})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _route


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    model = "standin-model"

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.seen: list[dict[str, Any]] = []
        self.chunks: list[tuple[float, int]] = []
        self.first_chunk = threading.Event()
        self.metrics_text: str | None = None  # what /metrics answers (a recorded sample)


class StandIn:
    """Start with `StandIn()` (or `StandIn(port)`), stop with `.close()`; `.url` is its
    endpoint."""

    def __init__(self, port: int = 0) -> None:
        self.server = _Server(port)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def seen(self) -> list[dict[str, Any]]:
        return self.server.seen

    def serve_metrics(self, text: str | None) -> None:
        """Answer /metrics with `text` (Prometheus exposition) from now on."""
        self.server.metrics_text = text

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def dead_url() -> str:
    """An endpoint nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
