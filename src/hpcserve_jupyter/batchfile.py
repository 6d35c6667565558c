"""Batch job files in the OpenAI Batch format: check them, build them, read the answers back.

Input: one JSON object per line, `{"custom_id", "method": "POST", "url", "body"}`. Output: the
shape vLLM's run-batch writes, one line per input line, `{"id", "custom_id", "response":
{"status_code", "body"} | null, "error"}`. A bad input file is refused whole, with every bad line
named, before a GPU is held; output files are read line by line (resume, progress, results) and
a last line without its newline (a run killed mid-write) is never trusted.

No Jupyter imports; pandas is imported only when a pandas object is passed in or asked for.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BadInput, close_matches, shown

URLS: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
RESULT_COLUMNS = ("custom_id", "status_code", "text", "embedding", "error", "usage")
EXAMPLE_LINE = ('{"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions", '
                '"body": {"model": "MODEL", "messages": [{"role": "user", "content": "Hello"}]}}')
FORMAT_HINT = (f"each line must be one JSON object with a unique custom_id, method POST, a url "
               f"({', '.join(URLS)}) and a body object, e.g. {EXAMPLE_LINE}")


@dataclass(frozen=True)
class InputSummary:
    """What a valid input file holds: enough to size a job and pick its model and runner."""

    total: int
    urls: dict[str, int]
    models: tuple[str, ...]
    size_bytes: int


def _kind(value: Any) -> str:
    """A value's JSON type as a message names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    names = {dict: "an object", list: "an array", str: "a string", int: "a number",
             float: "a number"}
    return names.get(type(value), type(value).__name__)


def _line_problems(text: str, seen: dict[str, int], no: int) -> tuple[list[str], Any]:
    """What is wrong with one request line, and the line as parsed."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return [f"not valid JSON ({e.msg} at column {e.colno})"], None
    except RecursionError:
        return ["not valid JSON (nested too deeply)"], None
    if not isinstance(obj, dict):
        return [f"not a JSON object (got {_kind(obj)})"], None
    bad = []
    cid = obj.get("custom_id")
    if "custom_id" not in obj:
        bad.append("missing custom_id")
    elif not isinstance(cid, str) or not cid:
        bad.append(f"custom_id must be a non-empty string (got {shown(cid)})")
    elif cid in seen:
        bad.append(f"duplicate custom_id {shown(cid)} (first on line {seen[cid]})")
    else:
        seen[cid] = no
    if obj.get("method", "POST") != "POST":
        bad.append(f'method must be "POST" (got {shown(obj["method"])})')
    url = obj.get("url")
    if "url" not in obj:
        bad.append(f"missing url (one of {', '.join(URLS)})")
    elif url not in URLS:
        bad.append(f"unknown url {shown(url)} (allowed: {', '.join(URLS)})")
    body = obj.get("body")
    if "body" not in obj:
        bad.append("missing body (a JSON object with the request)")
    elif not isinstance(body, dict):
        bad.append(f"body must be a JSON object (got {_kind(body)})")
    else:
        if body.get("stream") not in (None, False):
            bad.append("streaming is not supported in batch jobs; remove stream")
        if "model" in body and not isinstance(body["model"], str):
            bad.append(f"body.model must be a string (got {shown(body['model'])})")
    return bad, obj


def _checked_path(path: Path, max_bytes: int | None) -> int:
    """The file's size, or BadInput when it is missing, a directory or over the byte limit."""
    path = Path(path)
    try:
        exists, is_dir, regular = path.exists(), path.is_dir(), path.is_file()
    except OSError as exc:  # a name too long for the file system, a loop of links...
        raise BadInput(f"input file {str(path)[:200]!r} cannot be used: {exc.strerror}",
                       hint="give the path of a JSONL file with one request per line") from None
    if not exists:
        raise BadInput(f"input file {path} does not exist",
                       hint="give the path of a JSONL file with one request per line")
    if is_dir:
        raise BadInput(f"input {path} is a directory, not a JSONL file",
                       hint="give the path of a JSONL file with one request per line")
    if not regular:  # a device or a pipe would be read forever
        raise BadInput(f"input {path} is not a regular file",
                       hint="give the path of a JSONL file with one request per line")
    if not os.access(path, os.R_OK):
        raise BadInput(f"input file {path} cannot be read (permission denied)",
                       hint="check the file's permissions")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise BadInput(f"input file {path} is {size} bytes, over the limit of {max_bytes} bytes",
                       hint="split it into smaller files, or raise the input size limit "
                            "(max_bytes) where it is configured")
    return size


def validate_input(path: Path, *, one_model: bool = True, max_reported: int = 50,
                   max_bytes: int | None = None, max_lines: int | None = None) -> InputSummary:
    """Check a whole input file before anything runs: BadInput lists every bad line at once, so
    one fix-and-retry suffices. Reads line by line; only the custom_ids are kept in memory."""
    path = Path(path)
    size = _checked_path(path, max_bytes)
    seen: dict[str, int] = {}
    urls: dict[str, int] = {}
    models: dict[str, int] = {}
    reported: list[str] = []
    problems = total = 0

    def report(entry: str) -> None:
        nonlocal problems
        problems += 1
        if len(reported) < max_reported:
            reported.append(entry)

    with open(path, "rb") as f:
        for no, raw in enumerate(f, 1):
            try:
                text, bad_at = raw.decode("utf-8-sig" if no == 1 else "utf-8"), None
            except UnicodeDecodeError as e:
                text, bad_at = "?", e.start
            if not text.strip():
                continue
            total += 1
            if max_lines is not None and total > max_lines:
                raise BadInput(f"input file {path} has more than {max_lines} request lines "
                               f"(the limit)", hint="split it into smaller files, or raise the "
                               "input line limit (max_lines) where it is configured")
            if bad_at is not None:
                report(f"line {no}: not valid UTF-8 (byte 0x{raw[bad_at]:02x} at column "
                       f"{bad_at + 1}); save the file as UTF-8")
                continue
            bad, obj = _line_problems(text.rstrip("\r\n"), seen, no)
            if bad:
                report(f"line {no}: " + "; ".join(bad))
                continue
            urls[obj["url"]] = urls.get(obj["url"], 0) + 1
            model = obj["body"].get("model")
            if model and model not in models:
                models[model] = no
                if one_model and len(models) == 2:
                    (m1, l1), (m2, l2) = models.items()
                    report(f"line {l2}: a second model {shown(m2)} (the first, {shown(m1)}, is "
                           f"on line {l1}); a job's engine serves one model, so split the "
                           f"file by model")
    if problems:
        more = problems - len(reported)
        listing = "\n  ".join(reported + ([f"... and {more} more problems"] if more else []))
        raise BadInput(f"input file {path} has {problems} problem(s), nothing was run:\n  "
                       f"{listing}", hint=FORMAT_HINT)
    if not total:
        raise BadInput(f"input file {path} has no request lines", hint=FORMAT_HINT)
    return InputSummary(total=total, urls=urls, models=tuple(sorted(models)), size_bytes=size)


def _complete_lines(path: Path) -> Iterator[bytes]:
    """The lines of a file that end in a newline: a last line without one is a partial write."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; a missing file yields nothing
    except FileNotFoundError:
        return
    with f:
        for raw in f:
            if raw.endswith(b"\n"):
                yield raw


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The parsed JSON objects of an output file's complete lines; garbage lines are skipped."""
    for raw in _complete_lines(path):
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            yield obj


def answered_ids(path: Path) -> set[str]:
    """The custom_ids an output file already answers, so a resumed job skips them."""
    return {cid for obj in _records(Path(path)) if isinstance(cid := obj.get("custom_id"), str)}


def trim_partial_line(path: Path) -> None:
    """Cut a trailing line without its newline, so a resumed run appends whole lines only."""
    try:
        f = open(path, "r+b")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with f:
        pos = end = f.seek(0, os.SEEK_END)
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            chunk = f.read(pos - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                if start + cut + 1 < end:
                    f.truncate(start + cut + 1)
                return
            pos = start
        f.truncate(0)


def _is_series(obj: Any) -> bool:
    return type(obj).__module__.startswith("pandas") and type(obj).__name__ == "Series"


def build_lines(prompts: Any, *, url: str = "/v1/chat/completions", model: str | None = None,
                system: str | None = None, params: Mapping[str, Any] | None = None,
                id_prefix: str = "request-") -> Iterator[dict[str, Any]]:
    """Request lines from prompts (a list of str, or a pandas Series whose index labels become
    the custom_ids, so answers join back onto the DataFrame). Checks the ids up front."""
    if url not in URLS:
        raise BadInput(f"unknown url {shown(url)}", hint=close_matches(url, list(URLS)))
    if _is_series(prompts):
        if not prompts.index.is_unique:
            dups = prompts.index[prompts.index.duplicated()].unique().tolist()[:5]
            raise BadInput(f"the prompts' index has repeated labels {shown(dups)}; each label "
                           f"becomes a custom_id and must be unique",
                           hint="reset it with series.reset_index(drop=True)")
        ids = [str(label) for label in prompts.index]
        if len(set(ids)) != len(ids):
            raise BadInput("the prompts' index labels are not unique as strings (e.g. 1 and "
                           "'1'); each becomes a custom_id",
                           hint="reset it with series.reset_index(drop=True)")
        pairs: Iterable[tuple[str, str, Any]] = (
            (cid, f"label {shown(label)}", p)
            for cid, label, p in zip(ids, prompts.index, prompts.tolist(), strict=True))
    else:
        if isinstance(prompts, str | bytes | Mapping) or not hasattr(prompts, "__iter__"):
            raise BadInput(f"prompts must be a list of strings or a pandas Series, not "
                           f"{type(prompts).__name__}", hint="wrap a single prompt in a list")
        pairs = ((f"{id_prefix}{i}", f"position {i}", p) for i, p in enumerate(prompts))
    return _lines(pairs, url, model, system, dict(params or {}))


def _lines(pairs: Iterable[tuple[str, str, Any]], url: str, model: str | None,
           system: str | None, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    head = {"model": model} if model is not None else {}
    for cid, where, p in pairs:
        is_chat_list = (url == URLS[0] and isinstance(p, list) and p
                        and all(isinstance(m, dict) for m in p))
        if not isinstance(p, str) and not is_chat_list:
            allowed = "a string or a list of chat messages" if url == URLS[0] else "a string"
            raise BadInput(f"the prompt at {where} is {shown(p)}, not {allowed}",
                           hint="drop or fill the missing prompts first, e.g. "
                                "series.dropna().astype(str)")
        if url == URLS[0]:
            messages = list(p) if is_chat_list else [{"role": "user", "content": p}]
            if system is not None:
                messages.insert(0, {"role": "system", "content": system})
            body = {**head, "messages": messages, **params}
        else:
            body = {**head, ("prompt" if url == URLS[1] else "input"): p, **params}
        yield {"custom_id": cid, "method": "POST", "url": url, "body": body}


def write_jsonl(lines: Iterable[Mapping[str, Any]], path: Path) -> int:
    """Write lines to `path` (0600: prompts may be private) through a temp file and a rename,
    so a reader never sees half a file, even when building the lines fails midway."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def _error_text(value: Any) -> str | None:
    """An error as one string, from the shapes engines write (a string, {"message"}, or
    {"error": {"message"}}); None when there is none."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        inner = value.get("error")
        if isinstance(inner, dict | str):
            return _error_text(inner)
        if isinstance(value.get("message"), str):
            return value["message"]
    return json.dumps(value, ensure_ascii=False)


def _first(items: Any) -> dict[str, Any]:
    return items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}


def _flatten(obj: dict[str, Any]) -> dict[str, Any]:
    """One output line as a record: the answer's text or embedding, or why there is none."""
    response = obj.get("response") if isinstance(obj.get("response"), dict) else {}
    status = response.get("status_code")
    status = status if isinstance(status, int) and not isinstance(status, bool) else None
    body = response.get("body")
    data = body if isinstance(body, dict) else {}
    choice = _first(data.get("choices"))
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    text = message.get("content") if "message" in choice else choice.get("text")
    error = _error_text(obj.get("error"))
    if error is None and status is not None and not 200 <= status < 300:
        error = _error_text(body) or f"HTTP {status}"
    if error is None and status is None:
        error = "no response"
    usage = data.get("usage")
    return {"custom_id": obj.get("custom_id"), "status_code": status,
            "text": text if isinstance(text, str) else None,
            "embedding": _first(data.get("data")).get("embedding"),
            "error": error, "usage": usage if isinstance(usage, dict) else None}


def input_order(path: Path) -> dict[str, int]:
    """custom_id -> position in an input file (answers arrive in any order; tables show them
    in the input's)."""
    order: dict[str, int] = {}
    for obj in _records(Path(path)):
        cid = obj.get("custom_id")
        if isinstance(cid, str) and cid not in order:
            order[cid] = len(order)
    return order


def read_results(path: Path, order: Path | None = None) -> list[dict[str, Any]]:
    """The output file's answers flattened to RESULT_COLUMNS: in file order (the order they
    arrived), or in the order of the input file `order` (unknown ids last)."""
    records = [_flatten(obj) for obj in _records(Path(path))]
    if order is not None and Path(order).is_file():
        position = input_order(Path(order))
        records.sort(key=lambda r: position.get(r["custom_id"], len(position)))
    return records


def results_frame(path: Path, order: Path | None = None) -> Any:
    """read_results as a pandas DataFrame (columns RESULT_COLUMNS)."""
    try:
        import pandas as pd
    except ImportError as e:
        raise ImportError("results_frame needs pandas (pip install pandas); read_results "
                          "gives the same records as a list of dicts") from e
    return pd.DataFrame(read_results(path, order), columns=list(RESULT_COLUMNS))
