"""The gateway's answer rewriting (rewrite.py): events split anywhere, CRLF events, non-JSON
data and other content types pass unchanged; a JSON answer is renamed once it is whole. The
usage chunk (usage.py): added before [DONE] when the engine sends none, never twice."""

from __future__ import annotations

import asyncio
import json

import pytest

from hpcserve_jupyter.backends.base import TokenCounter, TokenRoute
from hpcserve_jupyter.jupyter.rewrite import ModelRenamer
from hpcserve_jupyter.jupyter.usage import StreamUsage

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


# ---------------------------------------------------------------------- the usage chunk


def chat_stream(words: list[str], usage: dict | None = None, done: bool = True) -> bytes:
    """An engine's chat stream: a role chunk, one chunk per word, a finish chunk, maybe usage."""
    def event(choices: list, **extra: object) -> bytes:
        return b"data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk",
                                       "created": 7, "model": "engine", "choices": choices,
                                       **extra}).encode() + b"\n\n"
    out = event([{"index": 0, "delta": {"role": "assistant"}}])
    out += b"".join(event([{"index": 0, "delta": {"content": w}}]) for w in words)
    out += event([{"index": 0, "delta": {}, "finish_reason": "length"}])
    if usage is not None:
        out += event([], usage=usage)
    return out + (b"data: [DONE]\n\n" if done else b"")


def watched(usage: StreamUsage, body: bytes, cuts: list[int]) -> tuple[bytes, bytes]:
    """(what passes before the usage chunk, what the renamer adds at the end)."""
    renamer = ModelRenamer("m1", "text/event-stream", usage)
    before = run(renamer, body, cuts)
    after = renamer.closing(asyncio.run(usage.chunk())) if renamer.usage_due else b""
    return before, after


def data_of(raw: bytes) -> list[object]:
    return [json.loads(e[6:]) if e[6:].startswith(b"{") else e[6:].decode()
            for e in raw.split(b"\n\n") if e]


@pytest.mark.parametrize("cuts", [[], [3, 90, 200], list(range(1, 400, 7))])
def test_a_stream_without_usage_gets_one_before_done(cuts):
    """No tokenizer declared: completion tokens are the content deltas, the prompt is 0."""
    body = chat_stream(["Hel", "lo", " there"])
    usage = StreamUsage({"model": "engine", "stream": True}, "m1", None, post=None)
    before, after = watched(usage, body, cuts)
    assert b"[DONE]" not in before and before + after
    events = data_of(before + after)
    assert events[-1] == "[DONE]"
    assert events[-2] == {"id": "c1", "object": "chat.completion.chunk", "created": 7,
                          "model": "m1", "choices": [],
                          "usage": {"prompt_tokens": 0, "completion_tokens": 3,
                                    "total_tokens": 3}}
    assert [e["model"] for e in events[:-1]] == ["m1"] * 6


def test_the_engines_own_usage_passes_untouched_and_alone():
    engine = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    body = chat_stream(["a", "b", "c"], usage=engine)
    usage = StreamUsage({"model": "engine"}, "m1", None, post=None)
    before, after = watched(usage, body, [50])
    assert after == b""
    events = data_of(before)
    assert [e["usage"] for e in events if isinstance(e, dict) and e.get("usage")] == [engine]
    assert events[-1] == "[DONE]"


def test_a_stream_ending_without_done_gets_the_usage_last():
    usage = StreamUsage({"model": "engine"}, "m1", None, post=None)
    _, after = watched(usage, chat_stream(["x"], done=False), [])
    assert data_of(after)[0]["usage"]["completion_tokens"] == 1 and b"[DONE]" not in after


def test_counted_with_the_engines_tokenizer_less_its_added_tokens():
    """The engine's tokenizer route as declared: the prompt as the engine sees it (messages
    through its chat route, else their text), each choice's text less what "" gets (a BOS)."""
    asked: list[tuple[str, dict]] = []

    async def post(path: str, body: dict) -> dict:
        asked.append((path, body))
        value = body.get("input", body.get("messages"))
        n = len(value) if isinstance(value, list) else len(value.split())
        return {"tokens": list(range(n + 1))}  # one added special token, like a BOS

    text_only = TokenCounter(TokenRoute("/tok", "input"))
    with_chat = TokenCounter(TokenRoute("/tok", "input"), chat=TokenRoute("/chat", "messages"))
    request = {"model": "engine", "messages": [{"role": "system", "content": "be brief"},
                                               {"role": "user", "content": [
                                                   {"type": "text", "text": "hi you"}]}]}
    for counter, prompt in ((text_only, 5), (with_chat, 3)):
        usage = StreamUsage(request, "m1", counter, post)
        watched(usage, chat_stream(["one", " two", " three"]), [])
        assert asyncio.run(usage.usage()) == {"prompt_tokens": prompt, "completion_tokens": 3,
                                              "total_tokens": prompt + 3}
    assert ("/tok", {"input": "be brief\nhi you", "model": "engine"}) in asked
    assert ("/chat", {"messages": request["messages"], "model": "engine"}) in asked
    assert ("/tok", {"input": "one two three", "model": "engine"}) in asked
    completion = StreamUsage({"model": "e", "prompt": ["a b", [1, 2]]}, "m1", text_only, post)
    assert asyncio.run(completion.usage())["prompt_tokens"] == 3 + 2


def test_a_tokenizer_that_fails_falls_back_to_the_deltas():
    async def post(path: str, body: dict) -> dict:
        return {"no": "count"}

    usage = StreamUsage({"model": "e", "prompt": "x"}, "m1",
                        TokenCounter(TokenRoute("/tok", "input")), post)
    watched(usage, chat_stream(["a", "b"]), [])
    assert asyncio.run(usage.usage()) == {"prompt_tokens": 0, "completion_tokens": 2,
                                          "total_tokens": 2}


def test_the_tokens_added_to_any_text_are_asked_once_per_engine():
    asked: list[str] = []

    async def post(path: str, body: dict) -> dict:
        asked.append(body["input"])
        return {"tokens": [0] * (len(body["input"]) + 1)}

    counter = TokenCounter(TokenRoute("/tok", "input"))
    for engine in ("s1 http://a", "s1 http://a", "s2 http://a"):
        usage = StreamUsage({"model": "e", "prompt": "xy"}, "m1", counter, post, engine=engine)
        watched(usage, chat_stream(["abc"]), [])
        assert asyncio.run(usage.usage()) == {"prompt_tokens": 3, "completion_tokens": 3,
                                              "total_tokens": 6}
    assert asked.count("") == 2


def test_odd_chunks_neither_break_the_stream_nor_count():
    odd = (b'data: {"id": "o", "choices": [{"index": "x", "delta": {"content": 5, '
           b'"reasoning_content": [1], "tool_calls": {"a": 1}}}, 7, {"text": null}]}\n\n'
           b'data: {"choices": [{"index": 1, "delta": {"tool_calls": [{"function": '
           b'{"name": "f", "arguments": "{}"}}]}}]}\n\ndata: [DONE]\n\n')
    usage = StreamUsage({"model": "e"}, "m1", None, post=None)
    before, after = watched(usage, odd, [11])
    assert data_of(after)[0]["usage"]["completion_tokens"] == 1 and before.count(b"data:") == 2
    assert usage.texts == {1: ["f{}"]}
