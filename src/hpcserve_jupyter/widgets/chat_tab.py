"""The control panel's Chat tab: a conversation with a ready session, the answer streamed into
the transcript as it comes (redrawn at most every CHAT_UPDATE_S seconds)."""

from __future__ import annotations

import html
import time

import ipywidgets as W

from .shared import Shared, message, select, set_options

CHAT_UPDATE_S = 0.1


class ChatTab:
    """The session chooser, sampling settings, input, Send/Clear and the transcript."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.history: list[dict[str, str]] = []  # the conversation so far (chat messages)
        self.last_answer: str | None = None
        self.chat_session = W.Dropdown(options=[], description="session")
        self.chat_session.observe(lambda _: self.clear(), "value")
        self.max_tokens = W.BoundedIntText(value=256, min=1, max=32768, description="max tokens",
                                           layout=W.Layout(width="13em"),
                                           style={"description_width": "initial"})
        self.temperature = W.BoundedFloatText(value=0.7, min=0.0, max=2.0, step=0.1,
                                              description="temperature",
                                              layout=W.Layout(width="13em"),
                                              style={"description_width": "initial"})
        self.chat_input = W.Textarea(placeholder="Ask something…",
                                     layout=W.Layout(width="100%", height="5em"))
        self.send_button = W.Button(description="Send", button_style="primary", icon="paper-plane")
        self.clear_button = W.Button(description="Clear", tooltip="start a new conversation")
        self.chat_log = W.HTML(layout=W.Layout(width="100%"))
        self.send_button.on_click(lambda _: self.send())
        self.clear_button.on_click(lambda _: self.clear())
        self.box = W.VBox([
            W.HBox([self.chat_session, self.max_tokens, self.temperature]), self.chat_log,
            self.chat_input, W.HBox([self.send_button, self.clear_button])])

    def offer(self, choices: list[tuple[str, str]]) -> None:
        """The ready sessions to talk to: (label, id) pairs."""
        set_options(self.chat_session, choices)

    def select(self, sid: str) -> None:
        with self.shared.lock:
            select(self.chat_session, sid)

    def clear(self) -> None:
        self.history.clear()
        self.last_answer = None
        self._render()

    def send(self) -> None:
        """What Send does: stream the answer to the input (with the conversation so far)."""
        sid, text = self.chat_session.value, self.chat_input.value.strip()
        if not sid:
            self._render(note="no ready session to talk to: launch one first")
            return
        if not text:
            return
        self.chat_input.value = ""
        self.history.append({"role": "user", "content": text})
        self.send_button.disabled = True
        params = {"max_tokens": self.max_tokens.value, "temperature": self.temperature.value}
        messages = list(self.history)
        facade = self.shared.facade

        def work() -> None:
            parts: list[str] = []
            last = 0.0
            try:
                for delta in facade.stream(sid, messages, **params):
                    parts.append(delta)
                    if time.monotonic() - last >= CHAT_UPDATE_S:
                        last = time.monotonic()
                        self._render(partial="".join(parts))
                answer = "".join(parts)
                self.history.append({"role": "assistant", "content": answer})
                self.last_answer = answer
                self._render()
            except Exception as exc:
                self.history.pop()  # the question was not answered: let it be asked again
                self.chat_input.value = text
                self._render(note=message(exc))
            finally:
                self.send_button.disabled = False

        self.shared.start(work, "chat")

    def _render(self, partial: str | None = None, note: str | None = None) -> None:
        parts = []
        for m in self.history:
            who = "you" if m["role"] == "user" else "model"
            parts.append(f'<div style="margin:2px 0"><b>{who}:</b> '
                         f'<span style="white-space:pre-wrap">{html.escape(m["content"])}'
                         "</span></div>")
        if partial is not None:
            parts.append(f'<div style="margin:2px 0"><b>model:</b> <span style="white-space:'
                         f'pre-wrap">{html.escape(partial)} ▌</span></div>')
        if note:
            parts.append(f'<div style="color:#c62828">{html.escape(note)}</div>')
        self.chat_log.value = "".join(parts)
