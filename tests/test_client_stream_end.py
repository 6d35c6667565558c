"""Where the client's streams end. Engines differ: most close with `data: [DONE]`, transformers
serve closes right after its last chunk (a finish_reason, no [DONE]: the real engine is in
tests/backends/test_transformers_real.py), and an engine that dies mid-answer closes with
neither, which must be an error rather than a silently shorter answer. An HTTP server on
loopback replays each ending byte for byte."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from hpcserve_jupyter.client import AsyncClient, Client
from hpcserve_jupyter.errors import EngineError


def chunk(content: str | None = None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    return json.dumps({"object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


WORDS = ["The", " sea", " is", " wide", "."]
ENDINGS: dict[str, list[str]] = {
    "done": [chunk(w) for w in WORDS] + [chunk(finish="stop"), "[DONE]"],
    "finish-no-done": [chunk(w) for w in WORDS] + [chunk(finish="length")],
    "finish-on-last-text": [chunk(w) for w in WORDS[:-1]] + [chunk(WORDS[-1], "stop")],
    "cut-short": [chunk(w) for w in WORDS[:3]],
}


class Replay(BaseHTTPRequestHandler):
    """Answers any POST with the SSE events of the ending named by the request's model, then
    closes the connection (HTTP/1.0: the body ends where the connection does)."""

    protocol_version = "HTTP/1.0"

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for data in ENDINGS[body["model"]]:
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def sync_deltas(url: str, ending: str) -> list[str]:
    with Client(url) as client:
        return list(client.stream_chat(ending, "hi"))


def async_deltas(url: str, ending: str) -> list[str]:
    async def collect() -> list[str]:
        async with AsyncClient(url) as client:
            return [d async for d in client.stream_chat(ending, "hi")]

    return asyncio.run(collect())


@pytest.mark.parametrize("read", [sync_deltas, async_deltas], ids=["sync", "async"])
@pytest.mark.parametrize("ending", ["done", "finish-no-done", "finish-on-last-text"])
def test_a_finished_stream_ends_cleanly_with_or_without_done(url: str, read: Any,
                                                             ending: str) -> None:
    assert read(url, ending) == WORDS


@pytest.mark.parametrize("read", [sync_deltas, async_deltas], ids=["sync", "async"])
def test_a_stream_closed_before_its_finish_is_an_error(url: str, read: Any) -> None:
    with pytest.raises(EngineError, match="closed the stream before the answer was finished"):
        read(url, "cut-short")
