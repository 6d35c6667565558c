"""MetricsWindow: rates from counters at known times, restarts, replicas, history; sparkline.
Scrapes carry their own times, so nothing here waits or measures time."""

from __future__ import annotations

import json
import threading

import pytest

from hpcserve_jupyter.metrics import EngineMetrics, MetricsWindow, sparkline


def scrape(at: float, gen: int | None = None, prompt: int | None = None,
           running: int | None = None, **more: object) -> EngineMetrics:
    return EngineMetrics(at=at, generation_tokens_total=gen, prompt_tokens_total=prompt,
                         requests_running=running, **more)  # type: ignore[arg-type]


def test_rate_over_the_last_minute() -> None:
    w = MetricsWindow()
    for i in range(7):  # t = 0, 10, ..., 60: +100 generated and +50 prompt tokens each time
        w.add(scrape(1000.0 + 10 * i, gen=100 * i, prompt=50 * i))
    assert w.generation_tokens_per_s() == pytest.approx(10.0)
    assert w.prompt_tokens_per_s() == pytest.approx(5.0)


def test_only_the_last_minute_counts() -> None:
    w = MetricsWindow()
    for i in range(13):  # 120 s: 1000 tokens / 10 s for a minute, then 100 / 10 s
        gen = 1000 * i if i <= 6 else 6000 + 100 * (i - 6)
        w.add(scrape(10.0 * i, gen=gen))
    assert w.generation_tokens_per_s() == pytest.approx(10.0)


def test_a_counter_reset_is_a_restart_not_a_negative_rate() -> None:
    w = MetricsWindow()
    for at, gen in ((0, 1000), (10, 1100), (20, 30), (30, 130)):  # the engine restarted
        w.add(scrape(at, gen=gen))
    # 100 before the restart, 30 since it began again from zero, then 100: 230 in 30 s.
    assert w.generation_tokens_per_s() == pytest.approx(230 / 30)


def test_one_replica_restarting_does_not_fool_the_sum() -> None:
    w = MetricsWindow()
    for at, a, b in ((0, 1000, 2000), (10, 5, 2100), (20, 105, 2200)):
        w.add(scrape(at, gen=a, running=1), replica="a")
        w.add(scrape(at, gen=b, running=2), replica="b")
    # a: 5 + 100 in 20 s; b: 200 in 20 s. Adding the counters first would read 3000 -> 2105 as
    # a restart and report (2105 + 200) / 20 = 115.
    assert w.generation_tokens_per_s() == pytest.approx(105 / 20 + 200 / 20)
    assert w.latest() == EngineMetrics(at=20, generation_tokens_total=2305, requests_running=3)


def test_a_replica_not_scraped_for_a_minute_drops_out() -> None:
    w = MetricsWindow()
    w.add(scrape(0, gen=0, running=4), replica="gone")
    for at in (50, 60, 70):
        w.add(scrape(at, gen=10 * at, running=1), replica="here")
    latest = w.latest()
    assert latest is not None and latest.requests_running == 1
    assert w.generation_tokens_per_s() == pytest.approx(10.0)


def test_late_or_repeated_scrapes_are_ignored() -> None:
    w = MetricsWindow()
    assert w.add(scrape(10, gen=100))
    assert not w.add(scrape(10, gen=999))
    assert not w.add(scrape(5, gen=0))
    assert w.add(scrape(20, gen=200))
    assert w.generation_tokens_per_s() == pytest.approx(10.0)


def test_no_rate_without_two_scrapes_or_without_the_counter() -> None:
    w = MetricsWindow()
    assert w.generation_tokens_per_s() is None and w.public() is None and w.history() == []
    w.add(scrape(0, gen=10))
    assert w.generation_tokens_per_s() is None
    w.add(scrape(10, gen=20))
    assert w.prompt_tokens_per_s() is None  # the engine has no prompt counter
    w.add(scrape(300, gen=50))  # after an unwatched stretch: one scrape in the last minute
    assert w.generation_tokens_per_s() is None


def test_old_scrapes_are_forgotten() -> None:
    w = MetricsWindow(keep_s=100, rate_s=60, step_s=10)
    for i in range(30):  # 290 s of scrapes, 10 tokens/s
        w.add(scrape(10.0 * i, gen=100 * i, running=1))
    history = w.history()
    assert len(history) == 10
    assert history[0][0] == pytest.approx(200.0) and history[-1][0] == pytest.approx(290.0)


def test_history_points_per_slot() -> None:
    w = MetricsWindow(keep_s=600, rate_s=60, step_s=10)
    for i in range(13):  # every 5 s from t=1000: 10 tokens/s with 1 running, then 20 with 3
        gen = 50 * i if i <= 6 else 300 + 100 * (i - 6)
        w.add(scrape(1000.0 + 5 * i, gen=gen, running=1 if i <= 6 else 3))
    assert w.history() == [(1010.0, 10.0, 1), (1020.0, 10.0, 1), (1030.0, 10.0, 1),
                           (1040.0, 20.0, 3), (1050.0, 20.0, 3), (1060.0, 20.0, 3)]
    assert w.generation_tokens_per_s() == pytest.approx(900 / 60)


def test_history_shows_gaps_as_none() -> None:
    w = MetricsWindow(keep_s=600, rate_s=60, step_s=10)
    for at, gen in ((1000, 0), (1005, 50), (1030, 300), (1035, 350)):
        w.add(scrape(at, gen=gen, running=2))
    assert w.history() == [(1005.0, 10.0, 2), (1015.0, None, None), (1025.0, None, None),
                           (1035.0, 10.0, 2)]


def test_public_is_the_json_status_views_carry() -> None:
    w = MetricsWindow()
    w.add(scrape(1000.0, gen=0, prompt=0, running=1, requests_waiting=0))
    w.add(scrape(1010.0, gen=250, prompt=40, running=2, requests_waiting=1))
    data = w.public()
    assert data is not None
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "requests_running": 2, "requests_waiting": 1,
        "prompt_tokens_total": 40, "generation_tokens_total": 250,
        "generation_tokens_per_s": 25.0, "prompt_tokens_per_s": 4.0,
        "kv_cache_usage": None,
        "scraped_at": "1970-01-01T00:16:50+00:00",
        "history": [{"t": 1010.0, "tokens_per_s": 25.0, "requests_running": 2}],
    }
    w.add(scrape(1020.0, gen=250, kv_cache_usage=0.123456))
    assert w.public()["kv_cache_usage"] == 0.1235  # type: ignore[index]


def test_threads_adding_while_others_read() -> None:
    w = MetricsWindow()
    errors: list[BaseException] = []

    def scraper(replica: str) -> None:
        try:
            for i in range(300):
                w.add(scrape(float(i), gen=10 * i, running=1), replica=replica)
        except BaseException as exc:  # pragma: no cover - what the test looks for
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(300):
                w.public()
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=scraper, args=(f"r{n}",)) for n in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    latest = w.latest()
    assert latest is not None and latest.requests_running == 4
    assert w.generation_tokens_per_s() == pytest.approx(40.0)


# ------------------------------------------------------------------ sparkline


def test_sparkline_scales_from_zero() -> None:
    assert sparkline(range(8)) == "▁▂▃▄▅▆▇█"
    assert sparkline([4, 8]) == "▅█"  # 4 is half of 8, not the floor
    assert sparkline([0, 0, 0]) == "▁▁▁"


def test_sparkline_gaps_and_width() -> None:
    assert sparkline([1, None, float("nan"), 1]) == "█  █"
    assert sparkline([None, None]) == "  "
    assert sparkline([]) == ""
    assert sparkline(range(8), width=3) == "▆▇█"
    assert sparkline([1, 2], width=0) == ""
