"""Batch job files: input checks that name every bad line, resume bookkeeping on output files
killed mid-write, building request lines from prompts, and flattening run-batch output."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from hpcserve_jupyter.batchfile import (
    RESULT_COLUMNS,
    URLS,
    InputSummary,
    answered_ids,
    build_lines,
    read_results,
    results_frame,
    trim_partial_line,
    validate_input,
    write_jsonl,
)
from hpcserve_jupyter.errors import BadInput

ALLOWED = ", ".join(URLS)


def chat(cid: str, content: str = "hi", model: str | None = "m", **extra) -> dict:
    body = {"messages": [{"role": "user", "content": content}], **extra}
    if model is not None:
        body = {"model": model, **body}
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}


def dump(obj) -> str:
    return json.dumps(obj)


def write(path: Path, lines: list[str | bytes]) -> Path:
    """Lines joined by newlines (bytes lines kept raw, for invalid UTF-8)."""
    data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    path.write_bytes(data)
    return path


def entries(err: BadInput) -> list[str]:
    """The listed problems of a BadInput message, one per line."""
    return [line.strip() for line in err.message.splitlines()[1:]]


def refused(path: Path, **kw) -> BadInput:
    with pytest.raises(BadInput) as info:
        validate_input(path, **kw)
    assert info.value.exit_code == 2
    return info.value


# --- validate_input -------------------------------------------------------------------------

def test_valid_file_summary(tmp_path):
    lines = [dump(chat("a")), "", "   ", dump(chat("b")),
             dump({"custom_id": "c", "url": URLS[2], "body": {"model": "m", "input": "x"}}),
             dump({"custom_id": "d", "url": "/v1/completions", "body": {"prompt": "x"}})]
    path = write(tmp_path / "in.jsonl", lines)
    summary = validate_input(path)
    assert summary == InputSummary(
        total=4, urls={"/v1/chat/completions": 2, "/v1/embeddings": 1, "/v1/completions": 1},
        models=("m",), size_bytes=path.stat().st_size)


def test_every_bad_line_listed_with_its_number(tmp_path):
    path = write(tmp_path / "in.jsonl", [
        dump(chat("a")),                                                     # 1 ok
        "not json",                                                          # 2
        "[1, 2]",                                                            # 3
        dump({"method": "POST", "url": URLS[0], "body": {}}),                # 4
        dump({"custom_id": 5, "url": URLS[0], "body": {}}),                  # 5
        "",                                                                  # 6 blank
        dump(chat("a")),                                                     # 7
        dump({**chat("g"), "method": "GET"}),                                # 8
        dump({"custom_id": "h", "body": {}}),                                # 9
        dump({"custom_id": "i", "url": "/v1/foo", "body": {}}),              # 10
        dump({"custom_id": "j", "url": URLS[2]}),                            # 11
        dump({"custom_id": "k", "url": URLS[2], "body": "text"}),            # 12
        dump(chat("l", stream=True)),                                        # 13
        b'{"custom_id": "\xff"}',                                            # 14
        dump({"custom_id": "o", "url": URLS[1], "body": {"prompt": "x"}}),   # 15 ok, no method
        dump({"custom_id": "", "url": URLS[1], "body": {}}),                 # 16
        dump({"custom_id": "q", "url": "/v2", "body": {"stream": True}}),    # 17 two problems
        '{"custom_id": "r",',                                                # 18
        dump({"custom_id": "s", "url": URLS[1], "body": {"model": 7}}),      # 19
    ])
    err = refused(path)
    assert err.message.splitlines()[0] == (
        f"input file {path} has 16 problem(s), nothing was run:")
    assert entries(err) == [
        "line 2: not valid JSON (Expecting value at column 1)",
        "line 3: not a JSON object (got an array)",
        "line 4: missing custom_id",
        "line 5: custom_id must be a non-empty string (got 5)",
        "line 7: duplicate custom_id 'a' (first on line 1)",
        "line 8: method must be \"POST\" (got 'GET')",
        f"line 9: missing url (one of {ALLOWED})",
        f"line 10: unknown url '/v1/foo' (allowed: {ALLOWED})",
        "line 11: missing body (a JSON object with the request)",
        "line 12: body must be a JSON object (got a string)",
        "line 13: streaming is not supported in batch jobs; remove stream",
        "line 14: not valid UTF-8 (byte 0xff at column 16); save the file as UTF-8",
        "line 16: custom_id must be a non-empty string (got '')",
        f"line 17: unknown url '/v2' (allowed: {ALLOWED}); streaming is not supported in "
        "batch jobs; remove stream",
        "line 18: not valid JSON (Expecting property name enclosed in double quotes at "
        "column 19)",
        "line 19: body.model must be a string (got 7)",
    ]
    assert err.hint is not None and '"custom_id": "request-1"' in err.hint
    assert str(err).endswith("hint: " + err.hint)


def test_more_problems_than_reported_are_counted(tmp_path):
    path = write(tmp_path / "in.jsonl", ["{}"] * 8)
    err = refused(path, max_reported=3)
    assert entries(err) == [f"line {n}: missing custom_id; missing url (one of {ALLOWED}); "
                            "missing body (a JSON object with the request)" for n in (1, 2, 3)
                            ] + ["... and 5 more problems"]


def test_mixed_models_reported_once_with_first_lines(tmp_path):
    path = write(tmp_path / "in.jsonl", [dump(chat("a", model=None)), dump(chat("b", model="x")),
                                         dump(chat("c", model="x")), dump(chat("d", model="y")),
                                         dump(chat("e", model="z")), dump(chat("f", model=""))])
    err = refused(path)
    assert entries(err) == ["line 4: a second model 'y' (the first, 'x', is on line 2); a job's "
                            "engine serves one model, so split the file by model"]
    summary = validate_input(path, one_model=False)
    assert summary.models == ("x", "y", "z")
    assert summary.total == 6


def test_blank_lines_keep_physical_numbers(tmp_path):
    path = write(tmp_path / "in.jsonl", ["", dump(chat("a")), "  \t", "", "oops", ""])
    assert entries(refused(path)) == ["line 5: not valid JSON (Expecting value at column 1)"]


def test_byte_order_mark_on_first_line_is_accepted(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (dump(chat("a")) + "\n").encode())
    assert validate_input(path).total == 1


def test_missing_directory_and_empty_inputs(tmp_path):
    err = refused(tmp_path / "nope.jsonl")
    assert err.message == f"input file {tmp_path / 'nope.jsonl'} does not exist"
    err = refused(tmp_path)
    assert err.message == f"input {tmp_path} is a directory, not a JSONL file"
    empty = write(tmp_path / "empty.jsonl", ["", "  "])
    assert refused(empty).message == f"input file {empty} has no request lines"
    (tmp_path / "zero.jsonl").write_bytes(b"")
    assert refused(tmp_path / "zero.jsonl").message.endswith("has no request lines")


def test_size_and_line_limits(tmp_path):
    path = write(tmp_path / "in.jsonl", [dump(chat(str(i))) for i in range(5)] + [""] * 3)
    size = path.stat().st_size
    err = refused(path, max_bytes=size - 1)
    assert err.message == (f"input file {path} is {size} bytes, over the limit of {size - 1} "
                           "bytes")
    assert "max_bytes" in err.hint
    assert validate_input(path, max_bytes=size).total == 5
    err = refused(path, max_lines=4)
    assert err.message == f"input file {path} has more than 4 request lines (the limit)"
    assert "max_lines" in err.hint
    assert validate_input(path, max_lines=5).total == 5  # blank lines are not counted


def test_hundred_thousand_lines_validate(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for i in range(100_000):
            f.write(dump(chat(f"request-{i}", content=f"question {i}")) + "\n")
    summary = validate_input(path)
    assert (summary.total, summary.urls, summary.models) == (
        100_000, {"/v1/chat/completions": 100_000}, ("m",))


# --- output files: resume ------------------------------------------------------------------

def out_line(cid: str, text: str = "ok") -> str:
    return dump({"id": f"vllm-{cid}", "custom_id": cid, "error": None, "response": {
        "status_code": 200, "body": {"choices": [{"message": {"content": text}}]}}})


def test_answered_ids_ignore_partial_last_line_and_garbage(tmp_path):
    path = tmp_path / "out.jsonl"
    assert answered_ids(path) == set()
    # The last line parses but has no newline: the writer may have been killed before it.
    path.write_text(out_line("a") + "\n" + "garbage\n" + "[1]\n" + out_line("b") + "\n"
                    + out_line("c"))
    assert answered_ids(path) == {"a", "b"}
    path.write_text(out_line("a") + "\n" + out_line("c") + "\n")
    assert answered_ids(path) == {"a", "c"}


def test_trim_partial_line(tmp_path):
    path = tmp_path / "out.jsonl"
    trim_partial_line(path)  # missing: nothing happens
    assert not path.exists()
    whole = out_line("a") + "\n" + out_line("b") + "\n"
    path.write_text(whole + out_line("c")[:30])
    trim_partial_line(path)
    assert path.read_text() == whole
    trim_partial_line(path)  # already whole: unchanged
    assert path.read_text() == whole
    path.write_text("x" * 200_000)  # one partial line longer than the read chunk
    trim_partial_line(path)
    assert path.read_bytes() == b""
    path.write_text("a\n" + "y" * 150_000)
    trim_partial_line(path)
    assert path.read_text() == "a\n"
    with open(path, "a") as f:
        f.write(out_line("d") + "\n")
    assert answered_ids(path) == {"d"}


# --- building input files ------------------------------------------------------------------

def test_build_lines_from_a_list():
    lines = list(build_lines(["one", "two"], model="m", system="be brief",
                             params={"max_tokens": 8, "temperature": 0}))
    assert lines == [
        {"custom_id": f"request-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": p}],
                  "max_tokens": 8, "temperature": 0}}
        for i, p in enumerate(["one", "two"])]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert list(build_lines([messages], id_prefix="q")) == [{
        "custom_id": "q0", "method": "POST", "url": "/v1/chat/completions",
        "body": {"messages": messages}}]
    assert list(build_lines(iter(["x"]), url="/v1/completions", params={"max_tokens": 3})) == [
        {"custom_id": "request-0", "method": "POST", "url": "/v1/completions",
         "body": {"prompt": "x", "max_tokens": 3}}]
    assert [x["body"] for x in build_lines(["x"], url="/v1/embeddings", model="e")] == [
        {"model": "e", "input": "x"}]


def test_build_lines_refuses_bad_prompts_and_urls():
    with pytest.raises(BadInput) as info:
        list(build_lines(["ok", None]))
    assert info.value.message == ("the prompt at position 1 is None, not a string or a list of "
                                  "chat messages")
    with pytest.raises(BadInput) as info:
        list(build_lines([[{"role": "user", "content": "x"}]], url="/v1/completions"))
    assert info.value.message.startswith("the prompt at position 0 is [{'role'")
    with pytest.raises(BadInput) as info:
        build_lines(["x"], url="/v1/chat/completion")
    assert info.value.message == "unknown url '/v1/chat/completion'"
    assert "'/v1/chat/completions'" in info.value.hint
    for not_a_list in ("a single string", 5):
        with pytest.raises(BadInput) as info:
            build_lines(not_a_list)
        assert info.value.message == ("prompts must be a list of strings or a pandas Series, "
                                      f"not {type(not_a_list).__name__}")


def test_build_lines_from_a_series_uses_index_labels():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"q": ["one", "two"]}, index=["row-a", 17])
    lines = list(build_lines(df["q"], url="/v1/completions"))
    assert [(x["custom_id"], x["body"]) for x in lines] == [
        ("row-a", {"prompt": "one"}), ("17", {"prompt": "two"})]
    with pytest.raises(BadInput) as info:
        build_lines(pd.Series(["a", "b", "c"], index=[1, 1, 2]))
    assert info.value.message.startswith("the prompts' index has repeated labels [1]")
    with pytest.raises(BadInput) as info:
        build_lines(pd.Series(["a", "b"], index=[1, "1"]))
    assert "not unique as strings" in info.value.message
    with pytest.raises(BadInput) as info:
        list(build_lines(pd.Series(["a", float("nan")], index=["x", "y"])))
    assert info.value.message == ("the prompt at label 'y' is nan, not a string or a list of "
                                  "chat messages")


def test_write_jsonl_private_atomic_and_valid(tmp_path):
    (tmp_path / "job").mkdir()
    path = tmp_path / "job" / "in.jsonl"
    assert write_jsonl(build_lines(["héllo", "two"], model="m"), path) == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ('{"custom_id":"request-0","method":"POST","url":'
                                    '"/v1/chat/completions","body":{"model":"m","messages":'
                                    '[{"role":"user","content":"héllo"}]}}')
    assert validate_input(path).total == 2
    with pytest.raises(BadInput):  # a bad prompt midway: the old file stays, no temp left
        write_jsonl(build_lines(["new", None]), path)
    assert path.read_text(encoding="utf-8") == text
    assert sorted(p.name for p in path.parent.iterdir()) == ["in.jsonl"]


# --- reading results -----------------------------------------------------------------------

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def output_file(tmp_path: Path) -> Path:
    rows = [
        {"id": "1", "custom_id": "chat", "error": None, "response": {"status_code": 200, "body": {
            "object": "chat.completion", "usage": USAGE,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}}]}}},
        {"id": "2", "custom_id": "comp", "error": None, "response": {"status_code": 200, "body": {
            "object": "text_completion", "choices": [{"index": 0, "text": " four"}]}}},
        {"id": "3", "custom_id": "emb", "error": None, "response": {"status_code": 200, "body": {
            "object": "list", "data": [{"index": 0, "embedding": [0.5, -1.0]}],
            "usage": {"prompt_tokens": 2, "total_tokens": 2}}}},
        {"id": "4", "custom_id": "rejected", "response": {"status_code": 400, "body": None},
         "error": "maximum context length is 2048 tokens"},
        {"id": "5", "custom_id": "http", "error": None, "response": {"status_code": 503, "body": {
            "error": {"message": "overloaded", "type": "server_error"}}}},
        {"id": "6", "custom_id": "obj", "response": None,
         "error": {"object": "error", "message": "bad request", "code": 400}},
    ]
    path = tmp_path / "out.jsonl"
    path.write_text("".join(dump(r) + "\n" for r in rows) + "not json\n" + out_line("cut"))
    return path


EXPECTED = [
    {"custom_id": "chat", "status_code": 200, "text": "Paris", "embedding": None, "error": None,
     "usage": USAGE},
    {"custom_id": "comp", "status_code": 200, "text": " four", "embedding": None, "error": None,
     "usage": None},
    {"custom_id": "emb", "status_code": 200, "text": None, "embedding": [0.5, -1.0],
     "error": None, "usage": {"prompt_tokens": 2, "total_tokens": 2}},
    {"custom_id": "rejected", "status_code": 400, "text": None, "embedding": None,
     "error": "maximum context length is 2048 tokens", "usage": None},
    {"custom_id": "http", "status_code": 503, "text": None, "embedding": None,
     "error": "overloaded", "usage": None},
    {"custom_id": "obj", "status_code": None, "text": None, "embedding": None,
     "error": "bad request", "usage": None},
]


def test_read_results_flattens_each_kind_in_file_order(tmp_path):
    assert read_results(output_file(tmp_path)) == EXPECTED
    assert read_results(tmp_path / "missing.jsonl") == []


def test_results_frame(tmp_path):
    pytest.importorskip("pandas")
    frame = results_frame(output_file(tmp_path))
    assert list(frame.columns) == list(RESULT_COLUMNS)
    assert frame["custom_id"].tolist() == [r["custom_id"] for r in EXPECTED]
    assert frame["text"].tolist()[:2] == ["Paris", " four"]
    assert frame["embedding"].iloc[2] == [0.5, -1.0]


def test_results_frame_without_pandas_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now raises ImportError
    with pytest.raises(ImportError, match="results_frame needs pandas"):
        results_frame(output_file(tmp_path))


def test_results_follow_the_input_order_when_asked(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"custom_id": c, "url": "/v1/completions",
                                       "body": {"prompt": c}}) + "\n" for c in "abc"))
    out = tmp_path / "out.jsonl"
    out.write_text("".join(json.dumps({"custom_id": c, "response": {
        "status_code": 200, "body": {"choices": [{"text": c.upper()}]}}, "error": None}) + "\n"
        for c in ["c", "zz", "a", "b"]))
    assert [r["custom_id"] for r in read_results(out)] == ["c", "zz", "a", "b"]  # as arrived
    assert [r["custom_id"] for r in read_results(out, inp)] == ["a", "b", "c", "zz"]
    assert [r["text"] for r in read_results(out, inp)] == ["A", "B", "C", "ZZ"]
