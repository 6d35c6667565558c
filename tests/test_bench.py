"""Load tests: criteria parsing and statistics (no model), and a real load test of the llama.cpp
server on SmolLM2 with its report, evaluation and plot."""

from __future__ import annotations

import contextlib
import json
import math

import pytest

from facade_fixtures import facade_fixture
from hpcserve_jupyter import api
from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.bench import (
    EVALUATION_FILE,
    METRICS,
    REPORT_FILE,
    Criterion,
    RequestSample,
    parse_criteria,
    percentile,
    summarize,
)
from hpcserve_jupyter.errors import BadInput, HpcserveError

RECIPE = "smollm2-135m"


# --------------------------------------------------------------------------- no model


def test_criteria_forms(tmp_path):
    assert parse_criteria(None) == [Criterion("errors", "==", 0)]
    assert parse_criteria("p95_latency_s <= 2") == [Criterion("p95_latency_s", "<=", 2)]
    assert parse_criteria(["p95_latency_s<=2", "throughput_rps > 1.5"]) == [
        Criterion("p95_latency_s", "<=", 2), Criterion("throughput_rps", ">", 1.5)]
    # a mapping: "OP NUMBER", or a bare number (<= for times/errors, >= for rates of work)
    assert parse_criteria({"p99_ttft_s": "< 0.5", "errors": 0, "tokens_per_s": 50}) == [
        Criterion("p99_ttft_s", "<", 0.5), Criterion("errors", "<=", 0),
        Criterion("tokens_per_s", ">=", 50)]
    yaml_file = tmp_path / "criteria.yaml"
    yaml_file.write_text("criteria:\n  - p95_latency_s <= 2\n  - errors == 0\n")
    assert [str(c) for c in parse_criteria(yaml_file)] == ["p95_latency_s <= 2", "errors == 0"]
    json_file = tmp_path / "criteria.json"
    json_file.write_text(json.dumps({"p50_latency_s": "<= 1", "error_rate": "== 0"}))
    assert [str(c) for c in parse_criteria(str(json_file))] == ["p50_latency_s <= 1",
                                                                "error_rate == 0"]


@pytest.mark.parametrize("spec, message", [
    (["p95_latncy_s <= 2"], "unknown metric 'p95_latncy_s'"),
    (["p95_latency_s about 2"], "expected 'METRIC OP NUMBER'"),
    ({"p95_latency_s": "<= fast"}, "is not a number"),
    ({"p95_latency_s": "roughly 2"}, "expected 'OP NUMBER'"),
    ([], "no criteria"),
    (42, "must be a list"),
])
def test_bad_criteria_say_what_is_wrong(spec, message):
    with pytest.raises(BadInput, match=message):
        parse_criteria(spec)


def test_unknown_metric_hint_and_missing_file(tmp_path):
    with pytest.raises(BadInput) as err:
        parse_criteria(["p95_latncy_s <= 2"])
    assert "p95_latency_s" in err.value.hint
    with pytest.raises(BadInput, match="cannot read the criteria file"):
        parse_criteria(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("criteria: [unclosed\n")
    with pytest.raises(BadInput, match="not valid YAML/JSON"):
        parse_criteria(bad)


def test_criteria_are_checked_before_anything_runs(tmp_path):
    hp = Hpcserve(home=tmp_path / "home", monitor=False,
                  target_configs={"local": {"kind": "local"}})
    try:  # the metric is wrong: said before looking for the (missing) session
        with pytest.raises(BadInput, match="unknown metric"):
            hp.bench("no-such-session", criteria=["p95_latncy_s <= 2"], out=tmp_path)
        with pytest.raises(HpcserveError, match="no session"):
            hp.bench("no-such-session", out=tmp_path)
        with pytest.raises(BadInput, match="at least 1"):
            hp.bench("no-such-session", requests=0)
    finally:
        hp.close()
    assert not (tmp_path / REPORT_FILE).exists()


def test_percentiles_and_summary():
    assert percentile([], 50) != percentile([], 50)  # NaN
    assert percentile([3.0], 95) == 3.0
    values = [float(x) for x in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    samples = [RequestSample(0, 0.0, latency_s=1.0, ttft_s=0.2, tokens=9),
               RequestSample(1, 0.1, latency_s=3.0, ttft_s=0.4, tokens=27),
               RequestSample(2, 0.2, error="boom")]
    m = summarize(samples, duration_s=4.0)
    assert set(m) == set(METRICS)
    assert (m["requests"], m["completed"], m["errors"]) == (3, 2, 1)
    assert m["error_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert m["throughput_rps"] == 0.5 and m["output_tokens"] == 36 and m["tokens_per_s"] == 9
    assert m["p50_latency_s"] == 2.0 and m["max_latency_s"] == 3.0
    assert m["p50_ttft_s"] == pytest.approx(0.3)
    assert m["p50_tokens_per_s_per_request"] == pytest.approx((9 / 0.8 + 27 / 2.6) / 2, 1e-3)
    empty = summarize([RequestSample(0, 0.0, error="x")], 1.0)
    assert empty["p95_latency_s"] is None and empty["completed"] == 0
    assert not Criterion("p95_latency_s", "<=", 2).check(empty)["passed"]  # no value: fails
    assert not math.isnan(empty["duration_s"])


# --------------------------------------------------------------------------- with the model


hp = facade_fixture(scope="module")


@pytest.fixture(scope="module")
def session(hp):
    s = hp.launch(RECIPE, timeout=120)
    assert str(s.state) == "ready", (s.reason, s.log_tail)
    return s


@pytest.mark.model
def test_load_test_report_and_evaluation(hp, session, tmp_path):
    report = hp.bench(session.id, requests=8, concurrency=4, max_tokens=16, out=tmp_path,
                      criteria=["errors == 0", "p95_latency_s <= 60", "tokens_per_s >= 1"],
                      progress=False)
    m = report.metrics
    assert (m["requests"], m["completed"], m["errors"]) == (8, 8, 0)
    assert 0 < m["p50_latency_s"] <= m["p95_latency_s"] <= m["p99_latency_s"] \
        <= m["max_latency_s"]
    assert 0 < m["p50_ttft_s"] <= m["p50_latency_s"]
    assert m["output_tokens"] >= 8 and m["tokens_per_s"] > 0 and m["throughput_rps"] > 0
    assert report.passed

    saved = json.loads((tmp_path / REPORT_FILE).read_text())
    assert saved["metrics"] == m
    assert saved["session"]["id"] == session.id and saved["session"]["model"] == RECIPE
    assert saved["config"] == {"requests": 8, "concurrency": 4, "max_tokens": 16,
                               "temperature": None,
                               "prompts": ["Write two sentences about the ocean."]}
    assert len(saved["samples"]) == 8
    for sample in saved["samples"]:
        assert sample["error"] is None and sample["tokens"] > 0
        assert 0 <= sample["ttft_s"] <= sample["latency_s"]
    evaluation = json.loads((tmp_path / EVALUATION_FILE).read_text())
    assert evaluation["passed"] is True and evaluation["report"] == REPORT_FILE
    assert [(c["criterion"], c["passed"]) for c in evaluation["criteria"]] == [
        ("errors == 0", True), ("p95_latency_s <= 60", True), ("tokens_per_s >= 1", True)]
    assert evaluation["criteria"][0]["value"] == 0

    text = repr(report)
    assert "8 requests, concurrency 4" in text and "evaluation: PASSED" in text
    png = report.png()
    assert png and png.startswith(b"\x89PNG")
    html = report._repr_html_()
    assert "data:image/png;base64," in html and "passed" in html


@pytest.mark.model
def test_failed_criteria_fail_the_evaluation(hp, session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the files go to the current directory by default
    monkeypatch.setattr(api, "_default", hp)
    report = api.bench(session.id, requests=3, concurrency=3, max_tokens=8,
                       prompt=["Say hi.", "Say bye."], temperature=0,
                       criteria={"p95_latency_s": "<= 0.000001", "errors": 0}, progress=True)
    assert not report.passed
    evaluation = json.loads((tmp_path / EVALUATION_FILE).read_text())
    assert evaluation["passed"] is False
    assert [c["passed"] for c in evaluation["criteria"]] == [False, True]
    assert "[FAIL] p95_latency_s <= 1e-06" in repr(report)
    assert json.loads((tmp_path / REPORT_FILE).read_text())["config"]["prompts"] == [
        "Say hi.", "Say bye."]


def test_a_session_that_is_not_ready_is_refused(tmp_path):
    hp = Hpcserve(home=tmp_path / "home", target_configs={"local": {"kind": "local"}})
    try:
        with contextlib.suppress(HpcserveError):
            hp.launch("bge-m3", wait=False)  # needs a GPU: failed at once
        (failed,) = hp.sessions()
        with pytest.raises(HpcserveError, match="not ready"):
            hp.bench(failed.id, out=tmp_path)
    finally:
        hp.close()
