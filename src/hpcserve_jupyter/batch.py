"""Batch prompts: many prompts to one ready session, `concurrency` in flight, results in order.

    results = api.batch(session_id, ["What is 2+2?", "Name a colour."], max_tokens=32)
    results.texts          # answers in input order (None where an item failed)
    results.errors         # [(index, message)] of the items that failed

A pandas Series in gives a Series out (same index) of `BatchResult`s:
`answers = api.batch(sid, df["question"]); df["answer"] = answers.map(lambda r: r.text)`.

No Jupyter imports here: the progress bar is `tqdm.auto` when tqdm is installed (a widget in a
notebook, text in a terminal), imported only when a batch runs.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from .errors import BadInput, HpcserveError, NotReady


@dataclass
class BatchResult:
    """One prompt's outcome: `text` (the answer) or `error` (why it has none)."""

    index: int
    prompt: Any
    text: str | None = None
    error: str | None = None
    latency_s: float | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def __str__(self) -> str:
        return self.text if self.text is not None else f"<error: {self.error}>"


class BatchResults(list):
    """The results of a batch, in input order (a list of BatchResult)."""

    @property
    def texts(self) -> list[str | None]:
        return [r.text for r in self]

    @property
    def errors(self) -> list[tuple[int, str]]:
        return [(r.index, r.error) for r in self if r.error is not None]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self)

    def summary(self) -> str:
        failed = sum(1 for r in self if not r.ok)
        return f"{len(self)} prompts, {len(self) - failed} answered, {failed} failed"

    def __repr__(self) -> str:
        lines = [self.summary()]
        for r in self:
            answer = r.text if r.ok else f"ERROR: {r.error}"
            lines.append(f"[{r.index}] {_short(_prompt_text(r.prompt), 60)} -> "
                         f"{_short(answer or '', 80)}")
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def _repr_html_(self) -> str:
        rows = []
        for r in self:
            answer = (html.escape(r.text or "") if r.ok else
                      f'<span style="color:#c62828">{html.escape(r.error or "")}</span>')
            rows.append(f'<tr><td style="text-align:left">{r.index}</td>'
                        f'<td style="text-align:left">{html.escape(_prompt_text(r.prompt))}</td>'
                        f'<td style="text-align:left;white-space:pre-wrap">{answer}</td></tr>')
        head = "".join(f'<th style="text-align:left">{h}</th>' for h in ("#", "prompt", "answer"))
        return (f"<div><b>{html.escape(self.summary())}</b><table><thead><tr>{head}</tr></thead>"
                "<tbody>"
                + "".join(rows) + "</tbody></table></div>")


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        return str(prompt[-1].get("content", ""))
    return str(prompt)


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _is_series(obj: Any) -> bool:
    return type(obj).__module__.startswith("pandas") and type(obj).__name__ == "Series"


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm.auto bar (lazily imported), or a no-op when disabled or tqdm is missing."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=total, desc=desc, unit="prompt")
    return _NoBar()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def check_ready(facade: Any, key: str) -> Any:
    """The session, if it is ready; else NotReady saying how to get there."""
    session = facade.status(key)
    if str(session.state) != "ready":
        hint = (f"launch it again: it has {session.state}" if session.state.terminal
                else f"wait for it first (api.wait({session.id!r}) or %serve wait {session.name})")
        raise NotReady(f"session {session.name} is {session.state}, not ready", hint=hint)
    return session


def run_batch(facade: Any, key: str, prompts: Iterable[Any] | Any, *, concurrency: int = 8,
              progress: bool = True, system: str | None = None, **params: Any) -> Any:
    """Send every prompt (a string, or a list of chat messages) through `facade.prompt`.

    Results keep the input order; an item that fails keeps its error (`.error`) and the others
    go on. `params` are chat parameters (max_tokens, temperature, ...). Returns BatchResults,
    or a pandas Series of BatchResult with the input's index when given a Series.
    """
    if concurrency < 1:
        raise BadInput(f"concurrency must be at least 1, got {concurrency}")
    series = prompts if _is_series(prompts) else None
    items = list(series.tolist() if series is not None else prompts)
    session = check_ready(facade, key)
    results = BatchResults(BatchResult(i, p) for i, p in enumerate(items))
    bar = progress_bar(len(items), f"batch {session.name}", progress)

    def one(result: BatchResult) -> None:
        start = time.perf_counter()
        try:
            result.text = facade.prompt(session.id, result.prompt, system=system, **params)
        except HpcserveError as exc:
            result.error, result.exception = exc.message, exc
        except Exception as exc:  # a per-item failure must not lose the other answers
            result.error, result.exception = f"{type(exc).__name__}: {exc}", exc
        result.latency_s = time.perf_counter() - start

    pool = ThreadPoolExecutor(max_workers=min(concurrency, max(1, len(items))),
                              thread_name_prefix="hpcserve-batch")
    try:
        for _ in as_completed([pool.submit(one, r) for r in results]):
            bar.update(1)
    except BaseException:  # Ctrl-C: drop what has not started, let running prompts finish
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
    if series is not None:
        import pandas as pd

        return pd.Series(list(results), index=series.index, name=series.name, dtype=object)
    return results
