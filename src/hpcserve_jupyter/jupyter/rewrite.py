"""What the gateway changes in an engine's answer: the `model` it names.

Engines answer with their own served name (`smollm2-135m`); a client that asked for the
session `m1` expects `m1` back (LiteLLM and LangChain compare or show it). Server-sent events
are rewritten event by event as they pass (a partial event waits for its end; nothing else is
held back), a JSON answer once it is complete; anything else passes unchanged. With a
`StreamUsage` (usage.py) it also sees every event, and holds `data: [DONE]` (and whatever
follows) back while the engine has sent no usage chunk: relay() adds that chunk first.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .usage import StreamUsage

EVENT_END = (b"\n\n", b"\r\n\r\n")


class ModelRenamer:
    """Feed the answer's body chunks; get back what to send on."""

    def __init__(self, model: str, content_type: str,
                 usage: StreamUsage | None = None) -> None:
        self.model = model
        kind = content_type.split(";")[0].strip().lower()
        self.mode = ("sse" if kind == "text/event-stream" else
                     "json" if kind == "application/json" else "pass")
        self._held = b""
        self.usage = usage if self.mode == "sse" else None
        self._tail: bytes | None = None  # `data: [DONE]` onwards, held for the usage chunk

    @property
    def usage_due(self) -> bool:
        """A stream that asked for usage and (so far) got none from the engine."""
        return self.usage is not None and self.usage.due

    def closing(self, usage_event: bytes) -> bytes:
        """The usage event and what was held after it (b"" the second time)."""
        tail, self._tail = self._tail or b"", None
        self.usage = None
        return usage_event + tail

    def feed(self, chunk: bytes) -> bytes:
        if self.mode == "pass":
            return chunk
        self._held += chunk
        if self.mode == "json":
            return b""
        out, rest = _complete_events(self._held)
        self._held = rest
        if self.usage is None:
            return b"".join(self._event(e) for e in out)
        return b"".join(self._watched(e) for e in out)

    def _watched(self, event: bytes) -> bytes:
        if self._tail is None and self.usage_due and _is_done(event):
            self._tail = b""
        if self._tail is not None:
            self._tail += event
            return b""
        return self._event(event)

    def end(self) -> bytes:
        """What is still held, renamed; b"" once said (it may be asked twice)."""
        held, self._held = self._held, b""
        if not held:
            return b""
        if self.mode == "json":
            return self._json(held)
        if self.mode == "sse" and held:
            return self._watched(held) if self.usage is not None else self._event(held)
        return held

    def _named(self, data: Any) -> bool:
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            data["model"] = self.model
            return True
        return False

    def _json(self, raw: bytes) -> bytes:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            return raw
        return json.dumps(data).encode() if self._named(data) else raw

    def _event(self, event: bytes) -> bytes:
        """One event (with its blank line): its `data:` lines renamed when they hold JSON."""
        lines = event.split(b"\n")
        for i, line in enumerate(lines):
            if line.startswith(b"data:"):
                payload = line[5:].strip()
                if payload.startswith(b"{"):
                    try:
                        data = json.loads(payload)
                    except (ValueError, RecursionError):
                        continue
                    if self.usage is not None and isinstance(data, dict):
                        self.usage.see(data)
                    if self._named(data):
                        ending = b"\r" if line.endswith(b"\r") else b""
                        lines[i] = b"data: " + json.dumps(data).encode() + ending
        return b"\n".join(lines)


def _complete_events(buf: bytes) -> tuple[list[bytes], bytes]:
    """The whole events at the start of `buf` (each with its blank line), and the rest."""
    events = []
    while True:
        cut = min((i + len(sep) for sep in EVENT_END if (i := buf.find(sep)) >= 0),
                  default=-1)
        if cut < 0:
            return events, buf
        events.append(buf[:cut])
        buf = buf[cut:]


def _is_done(event: bytes) -> bool:
    """Whether an event is the stream's `data: [DONE]`."""
    return any(line.startswith(b"data:") and line[5:].strip() == b"[DONE]"
               for line in event.split(b"\n"))
