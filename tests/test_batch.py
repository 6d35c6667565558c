"""Batch prompts against the real llama.cpp server (SmolLM2): order, concurrency, per-item
errors, pandas Series in and out, and the checks made before anything is sent."""

from __future__ import annotations

import threading
import time

import pytest

from facade_fixtures import facade_fixture
from hpcserve_jupyter import api
from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.batch import BatchResult, BatchResults
from hpcserve_jupyter.errors import BadInput, HpcserveError, LaunchError, NotReady

RECIPE = "smollm2-135m"


hp = facade_fixture(scope="module")


@pytest.fixture(scope="module")
def session(hp):
    s = hp.launch(RECIPE, timeout=120)
    assert str(s.state) == "ready", (s.reason, s.log_tail)
    return s


class Recording:
    """The real facade, logging which answer the engine gave to which prompt (thread-safe), so
    a test can tell that each result carries its own prompt's answer without reading the
    model's words (greedy answers differ between CPUs)."""

    def __init__(self, facade):
        self._facade = facade
        self._lock = threading.Lock()
        self.answers: dict[str, list[str]] = {}

    def __getattr__(self, name):
        return getattr(self._facade, name)

    def prompt(self, key, text, **params):
        answer = self._facade.prompt(key, text, **params)
        with self._lock:
            self.answers.setdefault(text, []).append(answer)
        return answer


@pytest.mark.model
def test_results_keep_input_order(hp, session):
    from hpcserve_jupyter.batch import run_batch

    words = ["pineapple", "banana", "elephant", "guitar", "umbrella", "volcano"]
    prompts = [f"Repeat this word exactly: {w}" for w in words]
    recording = Recording(hp)
    results = run_batch(recording, session.id, prompts, concurrency=3, max_tokens=16,
                        temperature=0, progress=False)
    assert isinstance(results, BatchResults) and len(results) == 6
    assert [r.index for r in results] == list(range(6))
    assert [r.prompt for r in results] == prompts
    assert results.ok and results.errors == []
    # each prompt reached the engine exactly once, and its result holds that request's answer
    assert sorted(recording.answers) == sorted(prompts)
    assert all(len(answers) == 1 for answers in recording.answers.values())
    for r in results:
        assert r.ok and r.text and r.latency_s > 0
        assert r.text == recording.answers[r.prompt][0], r
    assert results.texts == [r.text for r in results]
    assert "6 prompts, 6 answered, 0 failed" in repr(results)
    assert "<table>" in results._repr_html_()


@pytest.mark.model
def test_requests_run_concurrently(hp, session):
    """With concurrency 4, four prompts are in flight together: the batch takes clearly less
    than the four one after the other would (the engine overlaps at least the HTTP parts)."""
    in_flight, peak = 0, 0
    lock = threading.Lock()
    real_prompt = hp.prompt

    class Counting:  # a real facade, counting the calls in flight
        def __getattr__(self, name):
            return getattr(hp, name)

        def prompt(self, *args, **kwargs):
            nonlocal in_flight, peak
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            try:
                return real_prompt(*args, **kwargs)
            finally:
                with lock:
                    in_flight -= 1

    from hpcserve_jupyter.batch import run_batch

    start = time.perf_counter()
    results = run_batch(Counting(), session.id, ["Say hi."] * 8, concurrency=4, max_tokens=8,
                        progress=False)
    assert time.perf_counter() - start < 60
    assert results.ok
    assert peak == 4


@pytest.mark.model
def test_a_failing_item_keeps_its_error_and_the_others_go_on(hp, session):
    prompts = ["Say yes.", [{"role": "no-such-role", "content": "x"}], "Say no."]
    results = hp.batch(session.id, prompts, max_tokens=8, progress=True)
    assert [r.ok for r in results] == [True, False, True]
    bad = results[1]
    assert bad.text is None and "engine answered" in bad.error
    assert isinstance(bad.exception, HpcserveError)
    assert results.errors == [(1, bad.error)]
    assert str(bad).startswith("<error: ")
    assert not results.ok and "1 failed" in results.summary()


@pytest.mark.model
def test_a_pandas_series_gives_a_series(hp, session):
    pd = pytest.importorskip("pandas")
    questions = pd.Series(["Repeat exactly: 7", "Repeat exactly: 8"], index=["a", "b"],
                          name="question")
    from hpcserve_jupyter.batch import run_batch

    recording = Recording(hp)
    answers = run_batch(recording, session.id, questions, max_tokens=12, temperature=0,
                        progress=False)
    assert isinstance(answers, pd.Series)
    assert list(answers.index) == ["a", "b"] and answers.name == "question"
    assert all(isinstance(r, BatchResult) and r.ok for r in answers)
    texts = answers.map(lambda r: r.text)
    # each index label holds the answer the engine gave to that label's question
    assert texts["a"] == recording.answers["Repeat exactly: 7"][0]
    assert texts["b"] == recording.answers["Repeat exactly: 8"][0]


@pytest.mark.model
def test_module_function_uses_the_default_facade(hp, session, monkeypatch):
    monkeypatch.setattr(api, "_default", hp)
    results = api.batch(session.id, ["Say hi."], max_tokens=8, progress=False)
    assert results.ok and results[0].text


def test_checks_before_sending(tmp_path):
    hp = Hpcserve(home=tmp_path / "home", target_configs={"local": {"kind": "local"}})
    try:
        with pytest.raises(LaunchError):
            hp.launch("bge-m3", wait=False)  # needs a GPU: recorded as failed at once
        (failed,) = hp.sessions()
        with pytest.raises(NotReady, match="not ready") as err:
            hp.batch(failed.id, ["x"], progress=False)
        assert "launch it again" in err.value.hint
        with pytest.raises(BadInput, match="concurrency"):
            hp.batch(failed.id, ["x"], concurrency=0)
        with pytest.raises(HpcserveError, match="no session"):
            hp.batch("nope", ["x"])
    finally:
        hp.close()
