"""OpenAI-compatible client on httpx, sync and async, with streaming through httpx-sse.

Errors from the engine surface with the engine's own message (EngineError); a connection
failure says which endpoint could not be reached. A stream is complete at `data: [DONE]` or, for
engines that never send it (transformers serve), when it closes after a choice's finish_reason;
one that closes before either was cut short, which is an error rather than a shorter answer.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from httpx_sse import aconnect_sse, connect_sse

from .errors import EngineError, NotReady
from .httperrors import error_of, response_error, unreachable_on_http_error

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=30.0, pool=30.0)


def _messages(prompt: str | list[dict[str, Any]], system: str | None) -> list[dict[str, Any]]:
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system:
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def _raise_for(response: httpx.Response) -> None:
    if response.status_code >= 400:
        err = response_error(response)
        hint = f" ({err.hint})" if err.hint else ""
        raise EngineError(f"the engine answered {response.status_code}: {err.message}{hint}",
                          status_code=response.status_code)


def _delta(event_data: str, chat: bool) -> tuple[str, bool]:
    """The text of one stream event, and whether it finishes the answer (finish_reason)."""
    payload = json.loads(event_data)
    if "error" in payload:
        raise EngineError(f"the engine reported: {error_of(payload).message}")
    choices = payload.get("choices") or []
    if not choices:
        return "", False
    choice = choices[0]
    done = bool(choice.get("finish_reason"))
    if chat:
        return (choice.get("delta") or {}).get("content") or "", done
    return choice.get("text") or "", done


def _cut_short() -> EngineError:
    return EngineError("the engine closed the stream before the answer was finished "
                       "(no finish_reason and no [DONE])")


class _Base:
    def __init__(self, base_url: str, api_key: str | None = None,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout

    def _url(self, path: str) -> str:
        prefix = "" if self.base_url.endswith("/v1") else "/v1"
        return f"{self.base_url}{prefix}/{path.lstrip('/')}"

    @staticmethod
    def _chat_body(model: str, prompt: Any, system: str | None, stream: bool,
                   params: dict[str, Any]) -> dict[str, Any]:
        return {"model": model, "messages": _messages(prompt, system), "stream": stream, **params}

    def _unreachable(self) -> contextlib.AbstractContextManager[None]:
        """A connection failure inside the block: NotReady, naming the engine's URL."""
        return unreachable_on_http_error(f"the engine at {self.base_url}", NotReady)


class Client(_Base):
    """Blocking client; one connection pool per instance."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http = httpx.Client(timeout=self.timeout, headers=self.headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._unreachable():
            response = self._http.post(self._url(path), json=body)
        _raise_for(response)
        return response.json()

    def models(self) -> list[str]:
        with self._unreachable():
            response = self._http.get(self._url("models"))
        _raise_for(response)
        return [m["id"] for m in response.json().get("data", [])]

    def chat(self, model: str, prompt: str | list[dict[str, Any]], *, system: str | None = None,
             **params: Any) -> str:
        body = self._chat_body(model, prompt, system, False, params)
        return self._post("chat/completions", body)["choices"][0]["message"]["content"] or ""

    def complete(self, model: str, prompt: str, **params: Any) -> str:
        body = {"model": model, "prompt": prompt, "stream": False, **params}
        return self._post("completions", body)["choices"][0]["text"]

    def embeddings(self, model: str, texts: str | list[str]) -> list[list[float]]:
        data = self._post("embeddings", {"model": model, "input": texts})["data"]
        return [d["embedding"] for d in sorted(data, key=lambda d: d.get("index", 0))]

    def stream_chat(self, model: str, prompt: str | list[dict[str, Any]], *,
                    system: str | None = None, **params: Any) -> Iterator[str]:
        """Text deltas of a chat answer as the engine produces them."""
        body = self._chat_body(model, prompt, system, True, params)
        yield from self._stream("chat/completions", body, chat=True)

    def stream_complete(self, model: str, prompt: str, **params: Any) -> Iterator[str]:
        body = {"model": model, "prompt": prompt, "stream": True, **params}
        yield from self._stream("completions", body, chat=False)

    def _stream(self, path: str, body: dict[str, Any], chat: bool) -> Iterator[str]:
        with (self._unreachable(),
              connect_sse(self._http, "POST", self._url(path), json=body) as source):
            _raise_for(source.response)
            finished = False
            for event in source.iter_sse():
                if event.data.strip() == "[DONE]":
                    return
                text, done = _delta(event.data, chat)
                finished = finished or done
                if text:
                    yield text
        if not finished:
            raise _cut_short()


class AsyncClient(_Base):
    """Asyncio client with the same methods as Client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http = httpx.AsyncClient(timeout=self.timeout, headers=self.headers)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._unreachable():
            response = await self._http.post(self._url(path), json=body)
        _raise_for(response)
        return response.json()

    async def models(self) -> list[str]:
        with self._unreachable():
            response = await self._http.get(self._url("models"))
        _raise_for(response)
        return [m["id"] for m in response.json().get("data", [])]

    async def chat(self, model: str, prompt: str | list[dict[str, Any]], *,
                   system: str | None = None, **params: Any) -> str:
        body = self._chat_body(model, prompt, system, False, params)
        return (await self._post("chat/completions", body))["choices"][0]["message"]["content"]

    async def complete(self, model: str, prompt: str, **params: Any) -> str:
        body = {"model": model, "prompt": prompt, "stream": False, **params}
        return (await self._post("completions", body))["choices"][0]["text"]

    async def embeddings(self, model: str, texts: str | list[str]) -> list[list[float]]:
        data = (await self._post("embeddings", {"model": model, "input": texts}))["data"]
        return [d["embedding"] for d in sorted(data, key=lambda d: d.get("index", 0))]

    async def stream_chat(self, model: str, prompt: str | list[dict[str, Any]], *,
                          system: str | None = None, **params: Any) -> AsyncIterator[str]:
        body = self._chat_body(model, prompt, system, True, params)
        async for text in self._stream("chat/completions", body, chat=True):
            yield text

    async def _stream(self, path: str, body: dict[str, Any], chat: bool) -> AsyncIterator[str]:
        with self._unreachable():
            async with aconnect_sse(self._http, "POST", self._url(path), json=body) as source:
                if source.response.status_code >= 400:
                    await source.response.aread()
                    _raise_for(source.response)
                finished = False
                async for event in source.aiter_sse():
                    if event.data.strip() == "[DONE]":
                        return
                    text, done = _delta(event.data, chat)
                    finished = finished or done
                    if text:
                        yield text
        if not finished:
            raise _cut_short()
