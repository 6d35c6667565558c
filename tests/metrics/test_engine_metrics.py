"""Engines' Prometheus metrics -> EngineMetrics, on samples in samples/: vllm.txt recorded from
the real vLLM CPU engine (record_vllm_sample.py), the others composed from each engine's source
(each file's header says which). Expected values are the sample files' own numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcserve_jupyter.backends import backend_names, get_backend
from hpcserve_jupyter.errors import EngineError, NotFound
from hpcserve_jupyter.metrics import FORMATS, EngineFormat, EngineMetrics, combine, parse

SAMPLES = Path(__file__).resolve().parent / "samples"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


# ------------------------------------------------------------------ the samples


def test_vllm_recorded_sample() -> None:
    text = sample("vllm.txt")
    assert text.startswith("# Recorded from vLLM 0.32.0"), text.splitlines()[0]
    # The recording sent two prompts (70 prompt tokens in all, by vLLM's count) of 24 tokens'
    # answer each and read /metrics once both were answered: nothing running, the KV cache free.
    assert parse(text, "vllm", at=123.0) == EngineMetrics(
        at=123.0, requests_running=0, requests_waiting=0, prompt_tokens_total=70,
        generation_tokens_total=2 * 24, kv_cache_usage=0.0)


def test_sglang_sums_label_sets_and_averages_the_kv_share() -> None:
    m = parse(sample("sglang.txt"), "sglang", at=1.0)
    assert m == EngineMetrics(at=1.0, requests_running=5, requests_waiting=5,
                              prompt_tokens_total=1234, generation_tokens_total=5678,
                              kv_cache_usage=pytest.approx(0.3))


def test_tgi_reads_token_totals_from_its_histograms() -> None:
    m = parse(sample("tgi.txt"), "tgi", at=1.0)
    assert m == EngineMetrics(at=1.0, requests_running=2, requests_waiting=3,
                              prompt_tokens_total=432, generation_tokens_total=342,
                              kv_cache_usage=None)


def test_llama_server_recorded_after_two_prompts() -> None:
    """The real scrape (tests/backends/test_llama_server_real.py's engine): two prompts of
    at most 16 tokens, nothing running any more."""
    m = parse(sample("llama-server.txt"), "llama-server", at=1.0)
    assert m == EngineMetrics(at=1.0, requests_running=0, requests_waiting=0,
                              prompt_tokens_total=50, generation_tokens_total=32,
                              kv_cache_usage=None)


def test_llama_server_counts_as_cpp_prints_them() -> None:
    m = parse(sample("llama-server-composed.txt"), "llama-server", at=1.0)
    # 1234567 printed with 6 significant digits reads back as 1234570.
    assert m == EngineMetrics(at=1.0, requests_running=2, requests_waiting=1,
                              prompt_tokens_total=1_234_570, generation_tokens_total=4321,
                              kv_cache_usage=None)


def test_llama_server_kv_ratio_of_older_builds() -> None:
    older = sample("llama-server-composed.txt") + (
        "# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE llamacpp:kv_cache_usage_ratio gauge\n"
        "llamacpp:kv_cache_usage_ratio 0.125\n")
    assert parse(older, "llama-server").kv_cache_usage == 0.125


# ------------------------------------------------------------------ rules of the mapping


def test_absent_metrics_are_none() -> None:
    # An SGLang scrape read as vLLM has none of vLLM's names.
    m = parse(sample("sglang.txt"), "vllm", at=5.0)
    assert m == EngineMetrics(at=5.0)
    assert parse("", "tgi", at=5.0) == EngineMetrics(at=5.0)


def test_a_counter_matches_with_or_without_total() -> None:
    plain = "# TYPE tokens counter\ntokens 7\n"  # the parser reads this sample as tokens_total
    suffixed = "# TYPE tokens_total counter\ntokens_total 9\n"
    untyped = "tokens 11\n"  # no TYPE line: kept as written
    for text, want in ((plain, 7), (suffixed, 9), (untyped, 11)):
        for name in ("tokens", "tokens_total"):
            fmt = EngineFormat("test", generation_tokens_total=(name,))
            assert parse(text, fmt).generation_tokens_total == want, (text, name)


def test_vllm_kv_gauge_of_older_releases() -> None:
    old = ("# TYPE vllm:gpu_cache_usage_perc gauge\n"
           'vllm:gpu_cache_usage_perc{model_name="m"} 0.5\n')
    assert parse(old, "vllm").kv_cache_usage == 0.5
    both = old + ("# TYPE vllm:kv_cache_usage_perc gauge\n"
                  'vllm:kv_cache_usage_perc{model_name="m"} 0.25\n')
    assert parse(both, "vllm").kv_cache_usage == 0.25  # the current name wins


def test_several_models_and_engines_add_up() -> None:
    text = "\n".join([
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="a"} 2.0',
        'vllm:num_requests_running{engine="1",model_name="a"} 3.0',
        'vllm:num_requests_running{engine="0",model_name="b"} 1.0',
        "# TYPE vllm:generation_tokens counter",
        'vllm:generation_tokens_total{engine="0",model_name="a"} 100.0',
        'vllm:generation_tokens_created{engine="0",model_name="a"} 1.7e9',
        'vllm:generation_tokens_total{engine="1",model_name="a"} 50.0',
        "# TYPE vllm:kv_cache_usage_perc gauge",
        'vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.2',
        'vllm:kv_cache_usage_perc{engine="1",model_name="a"} 0.6',
    ]) + "\n"
    m = parse(text, "vllm")
    assert m.requests_running == 6
    assert m.generation_tokens_total == 150  # `_created` is a timestamp, not tokens
    assert m.kv_cache_usage == pytest.approx(0.4)
    assert m.requests_waiting is None


def test_nan_samples_are_ignored() -> None:
    text = ("# TYPE sglang:token_usage gauge\nsglang:token_usage{a=\"1\"} NaN\n"
            "sglang:token_usage{a=\"2\"} 0.5\n")
    assert parse(text, "sglang").kv_cache_usage == 0.5
    assert parse("sglang:token_usage NaN\n", "sglang").kv_cache_usage is None


def test_an_answer_that_is_not_prometheus_text_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match="not Prometheus text"):
        parse("<html><body><h1>404 Not Found</h1></body></html>\n", "vllm")


def test_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(NotFound) as err:
        parse("", "vlm")
    assert "vllm" in (err.value.hint or "")


def test_combine_replicas() -> None:
    a = EngineMetrics(at=10.0, requests_running=1, requests_waiting=None,
                      prompt_tokens_total=100, generation_tokens_total=10, kv_cache_usage=0.5)
    b = EngineMetrics(at=12.0, requests_running=2, requests_waiting=None,
                      prompt_tokens_total=50, generation_tokens_total=None, kv_cache_usage=None)
    assert combine([a, b]) == EngineMetrics(at=12.0, requests_running=3, requests_waiting=None,
                                            prompt_tokens_total=150, generation_tokens_total=10,
                                            kv_cache_usage=0.5)
    assert combine([]) is None


# ------------------------------------------------------------------ backends name their format


@pytest.mark.parametrize("name", backend_names())
def test_a_backends_metrics_format_is_known(name: str) -> None:
    backend = get_backend(name)
    assert (backend.metrics_path is None) == (backend.metrics_format is None), name
    if backend.metrics_format is not None:
        assert backend.metrics_format in FORMATS
        assert backend.metrics_path and backend.metrics_path.startswith("/")


def test_the_engines_with_prometheus_endpoints() -> None:
    formats = {name: get_backend(name).metrics_format for name in ("vllm", "sglang", "tgi")}
    assert formats == {"vllm": "vllm", "sglang": "sglang", "tgi": "tgi"}
    # llama-cpp-python's server has no /metrics route.
    assert get_backend("llama-cpp").metrics_path is None

