"""The gateway's answer rewriting (rewrite.py): events split anywhere, CRLF events, non-JSON
data and other content types pass unchanged; a JSON answer is renamed once it is whole."""

from __future__ import annotations

import json

import pytest

from hpcserve_jupyter.jupyter.rewrite import ModelRenamer

EVENTS = (b'data: {"id": "a", "model": "engine", "choices": []}\n\n'
          b": keepalive\n\n"
          b'data: {"id": "b", "model": "engine", "usage": null}\n\n'
          b"data: [DONE]\n\n")


def run(renamer: ModelRenamer, body: bytes, cuts: list[int]) -> bytes:
    out, last = [], 0
    for cut in [*cuts, len(body)]:
        out.append(renamer.feed(body[last:cut]))
        last = cut
    out.append(renamer.end())
    out.append(renamer.end())  # asked twice: nothing more
    return b"".join(out)


@pytest.mark.parametrize("cuts", [[], [1], [7, 8, 40, 41, 60], list(range(1, len(EVENTS)))])
def test_events_renamed_wherever_the_chunks_split(cuts):
    out = run(ModelRenamer("m1", "text/event-stream; charset=utf-8"), EVENTS, cuts)
    events = out.split(b"\n\n")
    assert json.loads(events[0][6:]) == {"id": "a", "model": "m1", "choices": []}
    assert events[1] == b": keepalive"
    assert json.loads(events[2][6:])["model"] == "m1"
    assert events[3] == b"data: [DONE]" and out.endswith(b"\n\n")


def test_crlf_events_and_a_last_event_without_its_blank_line():
    body = b'data: {"model": "engine"}\r\n\r\ndata: {"model": "engine", "x": 1}'
    out = run(ModelRenamer("m1", "text/event-stream"), body, [5])
    assert out == b'data: {"model": "m1"}\r\n\r\ndata: {"model": "m1", "x": 1}'


def test_json_answers_whole_and_other_bodies_untouched():
    answer = json.dumps({"model": "engine", "choices": [{"text": "hi"}]}).encode()
    out = run(ModelRenamer("m1", "application/json"), answer, [3, 10])
    assert json.loads(out) == {"model": "m1", "choices": [{"text": "hi"}]}
    assert run(ModelRenamer("m1", "application/json"), b"[1, 2]", [1]) == b"[1, 2]"
    assert run(ModelRenamer("m1", "application/json"), b"{not json", []) == b"{not json"
    assert run(ModelRenamer("m1", "text/plain"), b'{"model": "x"}', [2]) == b'{"model": "x"}'
    sse = b"data: {broken\n\ndata: 7\n\n"
    assert run(ModelRenamer("m1", "text/event-stream"), sse, [3]) == sse
