"""One reading of HTTP errors for both clients (httperrors.py): the body shapes engines, our REST
API and our gateway answer with, read the same by the engine client and the remote facade; and a
connection that fails reads "cannot reach ..." with the error type each client's users expect.
A loopback HTTP server answers each shape byte for byte."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from hpcserve_jupyter.client import AsyncClient, Client
from hpcserve_jupyter.errors import (
    BadInput,
    EngineError,
    HpcserveError,
    NotFound,
    NotReady,
    TargetUnreachable,
)
from hpcserve_jupyter.httperrors import error_of
from hpcserve_jupyter.remote import RemoteHpcserve

# model name -> (status, content type, body), as engines and our server answer
ANSWERS: dict[str, tuple[int, str, str]] = {
    "openai": (400, "application/json", json.dumps(
        {"error": {"message": "maximum context length is 2048", "type": "invalid_request_error",
                   "code": 400}})),
    "fastapi": (422, "application/json", json.dumps({"detail": "max_tokens: not an integer"})),
    "vllm": (400, "application/json", json.dumps(
        {"object": "error", "message": "temperature must be >= 0", "type": "BadRequestError"})),
    "tgi": (422, "application/json", json.dumps(
        {"error": "Input validation error", "error_type": "validation"})),
    "ours": (502, "application/json", json.dumps(
        {"error": "session s1 is unreachable: ConnectError", "reason": "unreachable",
         "detail": "the engine may have crashed; see its logs"})),
    "ours-no-detail": (502, "application/json", json.dumps(
        {"error": "session s1 is failed: it is gone", "detail": None, "reason": "gone"})),
    "text": (500, "text/plain", "  Internal engine failure\n"),
    "denied": (403, "application/json", json.dumps({"message": "Forbidden", "reason": None})),
    "named": (400, "application/json", json.dumps(
        {"error": "no session 'x'", "detail": "use the full id", "type": "NotFound"})),
    "empty": (503, "text/plain", ""),
}
EXPECTED = {
    "openai": "the engine answered 400: maximum context length is 2048",
    "fastapi": "the engine answered 422: max_tokens: not an integer",
    "vllm": "the engine answered 400: temperature must be >= 0",
    "tgi": "the engine answered 422: Input validation error",
    "ours": "the engine answered 502: session s1 is unreachable: ConnectError "
            "(the engine may have crashed; see its logs)",
    "ours-no-detail": "the engine answered 502: session s1 is failed: it is gone",
    "text": "the engine answered 500: Internal engine failure",
    "empty": "the engine answered 503: Service Unavailable",
    "denied": "the engine answered 403: Forbidden",
    "named": "the engine answered 400: no session 'x' (use the full id)",
}


class Answer(BaseHTTPRequestHandler):
    """Answers any request with the error named by the JSON body's `model` (GET: the path)."""

    protocol_version = "HTTP/1.0"

    def _answer(self, name: str) -> None:
        status, ctype, body = ANSWERS[name]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.end_headers()
        self.wfile.write(body.encode())

    def do_POST(self) -> None:
        self._answer(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["model"])

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1] if "/v1/" not in self.path else "ours"
        self._answer("denied" if name == "events" else name)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("shape", sorted(ANSWERS))
def test_the_engine_client_reads_every_error_shape(url, shape):
    with Client(url) as c, pytest.raises(EngineError) as err:
        c.chat(shape, "hi")
    assert str(err.value) == EXPECTED[shape]
    assert err.value.status_code == ANSWERS[shape][0]
    with Client(url) as c, pytest.raises(EngineError) as streamed:  # read before it is shown
        list(c.stream_chat(shape, "hi"))
    assert str(streamed.value) == EXPECTED[shape]


@pytest.mark.parametrize("shape", ["openai", "ours", "text"])
def test_the_async_client_reads_them_alike(url, shape):
    async def run() -> tuple[str, str]:
        async with AsyncClient(url) as c:
            with pytest.raises(EngineError) as plain:
                await c.chat(shape, "hi")
            with pytest.raises(EngineError) as streamed:
                async for _ in c.stream_chat(shape, "hi"):
                    pass
        return str(plain.value), str(streamed.value)

    assert asyncio.run(run()) == (EXPECTED[shape], EXPECTED[shape])


def test_bodies_without_a_message_fall_back_to_what_they_have():
    assert error_of({"error": {"code": 7}}, "raw").message == "{'code': 7}"
    assert error_of(["a", "b"], "raw").message == "['a', 'b']"
    assert error_of(None, "raw").message == "raw"
    assert error_of({"detail": [{"loc": ["body"], "msg": "bad"}]}).message == (
        "[{'loc': ['body'], 'msg': 'bad'}]")
    ours = error_of({"error": "no session 'x'", "detail": "use the full id", "type": "NotFound"})
    assert (ours.message, ours.hint, ours.kind) == ("no session 'x'", "use the full id",
                                                    "NotFound")
    gateway = error_of({"error": {"message": "m", "type": "starting", "detail": "d"},
                        "detail": "d"})
    assert (gateway.message, gateway.hint, gateway.kind) == ("m", "d", "starting")


def test_the_remote_facade_maps_errors_to_its_classes(url):
    with RemoteHpcserve(url) as hp:
        # our REST shape without a `type`: the status decides (502 -> NotReady)
        with pytest.raises(NotReady) as ours:
            hp._call("GET", "ours")
        assert ours.value.message == "session s1 is unreachable: ConnectError"
        assert ours.value.hint == "the engine may have crashed; see its logs"
        with pytest.raises(HpcserveError, match="refused") as refused:  # 401 -> the token
            hp._call("GET", "denied")
        assert refused.value.hint == "check the token (HPCSERVE_SERVER_TOKEN)"
        with pytest.raises(HpcserveError, match="refused"):  # the event stream too, at once
            hp.watch()
        with pytest.raises(NotFound) as named:  # the class the server named, whatever status
            hp._call("GET", "named")
        assert (named.value.message, named.value.hint) == ("no session 'x'", "use the full id")
        with pytest.raises(BadInput) as vllm:  # 400 -> BadInput
            hp._call("GET", "vllm")
        assert vllm.value.message == "temperature must be >= 0"
        with pytest.raises(NotReady) as empty:  # 503 -> NotReady, the reason as the message
            hp._call("GET", "empty")
        assert empty.value.message == "Service Unavailable"


def test_a_dead_engine_is_not_ready(closed_port):
    with Client(closed_port) as c, pytest.raises(NotReady) as err:
        c.models()
    assert str(err.value).startswith(f"cannot reach the engine at {closed_port}: ConnectError")
    with Client(closed_port) as c, pytest.raises(NotReady, match="cannot reach the engine"):
        list(c.stream_chat("m", "hi"))


def test_a_dead_jupyter_server_is_unreachable_on_every_path(closed_port):
    with RemoteHpcserve(closed_port) as hp:
        calls = {"call": hp.recipes, "stream": lambda: list(hp.follow_logs("s1")),
                 "events": hp.watch, "wait": lambda: hp.wait("s1", timeout=5)}
        for what, call in calls.items():
            with pytest.raises(TargetUnreachable) as err:
                call()
            assert err.value.message.startswith(
                f"cannot reach the Jupyter server at {closed_port}/: ConnectError"), what
            assert err.value.hint == "is it running? (HPCSERVE_SERVER_URL)", what
