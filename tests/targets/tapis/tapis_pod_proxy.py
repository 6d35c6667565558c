"""A tiny path-prefix reverse proxy: `http://127.0.0.1:<port>/<pod_id>/...` -> that pod's process.

The live Pods service publishes a pod at `https://<pod_id>.pods.<tenant host>` through its own
proxy; the stand-in runs each pod as a local process on a free port instead. This proxy plays
the service's proxy for the tests, so the target is configured exactly as a site behind a
gateway would be (`endpoint_template: http://127.0.0.1:<port>/{pod_id}`) and production code has
no test hook. Responses are streamed (server-sent events pass through as they are written).
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "host", "content-length"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _forward(self) -> None:
        proxy: PodProxy = self.server.proxy  # type: ignore[attr-defined]
        pod_id, _, rest = self.path.lstrip("/").partition("/")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        base = proxy.standin.local_url(pod_id)
        if base is None:
            self._reply(502, {"error": f"pod {pod_id} has no running process"})
            return
        target = urlsplit(base)
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=300)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            conn.request(self.command, "/" + rest, body=body, headers=headers)
            resp = conn.getresponse()
        except OSError as exc:
            conn.close()
            self._reply(502, {"error": f"pod {pod_id} does not answer: {exc}"})
            return
        try:
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP:
                    self.send_header(k, v)
            size = resp.getheader("Content-Length")
            if size is not None:
                self.send_header("Content-Length", size)
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            while chunk := resp.read1(65536):
                self.wfile.write(chunk)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            conn.close()

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward


class PodProxy:
    def __init__(self, standin) -> None:
        self.standin = standin
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def endpoint_template(self) -> str:
        return f"http://127.0.0.1:{self.port}/{{pod_id}}"

    def start(self) -> PodProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
