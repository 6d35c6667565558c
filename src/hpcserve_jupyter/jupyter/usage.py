"""The usage chunk of a streamed answer that asked for one (`stream_options.include_usage`)
when the engine sends none (llama-cpp-python's server never does; LiteLLM and LangChain read
it for token counts and costs).

The gateway watches the events as they pass (rewrite.py) and, when the engine's stream ends
without a usage chunk, adds `{"id", "object", "created", "model", "choices": [], "usage"}`
before `data: [DONE]`, counted with the engine's own tokenizer over HTTP as its backend declares
(`Backend.token_counter`, no engine named here):

- prompt_tokens: the chat messages through the engine's chat template where it has a route
  for that; otherwise the messages' text joined by newlines (the template's own tokens are not
  counted: fewer than the engine's figure), or a completion's prompt (exact);
- completion_tokens: each choice's streamed text tokenized, less the special tokens the
  tokenizer adds to any text (what it answers for ""); without a tokenizer, or when it fails or
  takes longer than COUNT_TIMEOUT, the number of content deltas (llama.cpp streams one token per
  delta, merging only the bytes of one character), and prompt_tokens 0.

An engine's own usage chunk passes untouched and nothing is added.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from ..backends.base import TokenCounter, TokenRoute

log = logging.getLogger(__name__)
COUNT_TIMEOUT = 5.0  # seconds; the stream's end waits this long for the engine's tokenizer

Post = Callable[[str, dict[str, Any]], Awaitable[Any]]
_ADDED: dict[tuple[str, str, Any], int] = {}  # (engine, path, model): the tokens "" gets


def wanted(body: dict[str, Any]) -> bool:
    """Whether a request body asks for a streamed usage chunk."""
    options = body.get("stream_options")
    return bool(body.get("stream") is True and isinstance(options, dict)
                and options.get("include_usage") is True)


def _text_of(content: Any) -> str:
    """A message's or delta's content as text (a string, or the text of its parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_str(p.get("text")) for p in content if isinstance(p, dict))
    return ""


class StreamUsage:
    """What the usage chunk needs from one streamed exchange: see() each event's data, then
    `due` says whether the engine left it out, and chunk() counts and renders it."""

    def __init__(self, request: dict[str, Any], model: str, counter: TokenCounter | None,
                 post: Post, engine: str = "") -> None:
        self.request = request
        self.engine = engine  # the replica's URL: what the added-token count is cached by
        self.model = model
        self.counter = counter
        self.post = post
        self.engine_sent = False
        self.deltas = 0
        self.texts: dict[int, list[str]] = {}
        self.first: dict[str, Any] = {}

    def see(self, data: dict[str, Any]) -> None:
        if data.get("usage"):
            self.engine_sent = True
        if not self.first and data.get("id") is not None:
            self.first = {k: data.get(k) for k in ("id", "object", "created")}
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta, index = choice.get("delta"), choice.get("index")
            part = _delta_text(delta) if isinstance(delta, dict) else _str(choice.get("text"))
            if part:
                self.deltas += 1
                self.texts.setdefault(index if isinstance(index, int) else 0, []).append(part)

    @property
    def due(self) -> bool:
        return not self.engine_sent

    async def usage(self) -> dict[str, int]:
        """prompt, completion and total tokens, as the module docstring says."""
        prompt, completion = 0, self.deltas
        if self.counter is not None:
            try:
                prompt, completion = await asyncio.wait_for(self._count(self.counter),
                                                            COUNT_TIMEOUT)
            except Exception as exc:  # TimeoutError, CountFailed: never break the stream
                log.debug("hpcserve gateway: usage counted by deltas: %r", exc)
                prompt, completion = 0, self.deltas
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    async def chunk(self) -> bytes:
        """The usage event, `data: {...}` and its blank line."""
        obj = self.first.get("object") or "chat.completion.chunk"
        data = {"id": self.first.get("id") or f"hpcserve-{time.time_ns()}", "object": obj,
                "created": self.first.get("created") or int(time.time()),
                "model": self.model, "choices": [], "usage": await self.usage()}
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    async def _count(self, counter: TokenCounter) -> tuple[int, int]:
        texts = ["".join(parts) for _, parts in sorted(self.texts.items())]
        counts = await _all(self._prompt(counter), self._added(counter.text),
                            *(self._tokens(counter.text, t) for t in texts))
        prompt, added, *each = counts
        return prompt, sum(max(0, n - added) for n in each)

    async def _added(self, route: TokenRoute) -> int:
        """The special tokens the tokenizer adds to any text (a BOS), asked once per engine."""
        key = (self.engine, route.path, self.request.get("model"))
        if not self.engine or key not in _ADDED:
            if len(_ADDED) > 256:
                _ADDED.clear()
            _ADDED[key] = await self._tokens(route, "")
        return _ADDED[key]

    async def _prompt(self, counter: TokenCounter) -> int:
        messages = self.request.get("messages")
        if isinstance(messages, list):
            if counter.chat is not None:
                return await self._tokens(counter.chat, messages)
            text = "\n".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
            return await self._tokens(counter.text, text)
        prompt = self.request.get("prompt")
        if isinstance(prompt, list) and all(isinstance(p, int) for p in prompt):
            return len(prompt)  # token ids
        parts = prompt if isinstance(prompt, list) else [prompt]
        return sum(await _all(*(self._prompt_part(counter, p) for p in parts)))

    async def _prompt_part(self, counter: TokenCounter, part: Any) -> int:
        if isinstance(part, str):
            return await self._tokens(counter.text, part)
        return len(part) if isinstance(part, list) else 0

    async def _tokens(self, route: TokenRoute, value: Any) -> int:
        body: dict[str, Any] = {route.field: value}
        if route.model:
            body["model"] = self.request.get("model")
        try:
            answer = await self.post(route.path, body)
            found = answer[route.answer] if route.answer else answer
        except (KeyError, TypeError, IndexError):
            raise CountFailed(route.path) from None
        if isinstance(found, bool) or not isinstance(found, int | list):
            raise CountFailed(route.path)
        return found if isinstance(found, int) else len(found)


class CountFailed(Exception):
    """The engine's tokenizer did not answer with a count."""


async def _all(*counts: Awaitable[int]) -> list[int]:
    """Every count, or the first failure once all have ended (none left running behind)."""
    done = await asyncio.gather(*counts, return_exceptions=True)
    for result in done:
        if isinstance(result, BaseException):
            raise result
    return [r for r in done if isinstance(r, int)]


def engine_post(client: httpx.AsyncClient, url: str, api_key: str | None) -> Post:
    """POST JSON to one replica with the session's key; the answer's JSON, or CountFailed."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def post(path: str, body: dict[str, Any]) -> Any:
        try:
            r = await client.post(url.rstrip("/") + path, json=body, headers=headers,
                                  timeout=COUNT_TIMEOUT)
            if r.status_code >= 400:
                raise CountFailed(f"{path}: {r.status_code}")
            return r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise CountFailed(f"{path}: {type(exc).__name__}") from None

    return post


def _delta_text(delta: dict[str, Any]) -> str:
    """The generated text a chat delta carries: content, reasoning and tool-call arguments."""
    text = _text_of(delta.get("content")) + _str(delta.get("reasoning_content"))
    calls = delta.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            text += _str(fn.get("name")) + _str(fn.get("arguments"))
    return text


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""
