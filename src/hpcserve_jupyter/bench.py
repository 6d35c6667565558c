"""Load tests of a ready session: N streamed chat requests, C in flight, measured from here.

    report = api.bench(session_id, requests=50, concurrency=8, max_tokens=64,
                       criteria=["p95_latency_s <= 2", "errors == 0"])
    report.metrics["p95_latency_s"], report.passed

Metrics (all times in seconds, measured by the client, so they include the network path):

    requests, completed, errors, error_rate, duration_s, throughput_rps (completed / duration),
    p50/p95/p99/mean/max_latency_s (request start -> last token),
    p50/p95/p99/mean_ttft_s (request start -> first non-empty token),
    output_tokens (streamed chunks: one per token for llama.cpp, vLLM and SGLang),
    tokens_per_s (output_tokens / duration), p50_tokens_per_s_per_request

Writes `load_test_report.json` (config, metrics, every request) and
`load_test_evaluation.json` (each criterion: value, threshold, passed; and `passed` overall)
into `out` (default: the current directory). Criteria come as a list of "METRIC OP NUMBER"
strings, a mapping METRIC -> "OP NUMBER" (or a bare number: `<=` for times, errors and rates,
`>=` for throughput and tokens/s), or a YAML/JSON file holding either (optionally under a
`criteria:` key). Without criteria the evaluation checks `errors == 0`.

No Jupyter imports: the plot (`BenchReport.figure()`, and the inline PNG of its HTML repr) uses
matplotlib's object API, imported only when drawn.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import operator
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ._version import __version__
from .batch import check_ready, progress_bar
from .errors import BadInput, HpcserveError

REPORT_FILE = "load_test_report.json"
EVALUATION_FILE = "load_test_evaluation.json"
DEFAULT_PROMPT = "Write two sentences about the ocean."

METRICS = (
    "requests", "completed", "errors", "error_rate", "duration_s", "throughput_rps",
    "p50_latency_s", "p95_latency_s", "p99_latency_s", "mean_latency_s", "max_latency_s",
    "p50_ttft_s", "p95_ttft_s", "p99_ttft_s", "mean_ttft_s",
    "output_tokens", "tokens_per_s", "p50_tokens_per_s_per_request",
)
HIGHER_IS_BETTER = {"completed", "throughput_rps", "tokens_per_s", "p50_tokens_per_s_per_request"}
OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
    "==": operator.eq, "!=": operator.ne,
}
_CRITERION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")


@dataclass
class RequestSample:
    """One request of the load test, times relative to the test's start."""

    index: int
    start_s: float
    latency_s: float | None = None
    ttft_s: float | None = None
    tokens: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Criterion:
    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    def check(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        value = metrics.get(self.metric)
        passed = value is not None and not (isinstance(value, float) and math.isnan(value)) \
            and OPS[self.op](float(value), self.threshold)
        return {"criterion": str(self), "metric": self.metric, "op": self.op,
                "threshold": self.threshold, "value": value, "passed": bool(passed)}


# ---------------------------------------------------------------------- criteria


def _number(text: Any, where: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise BadInput(f"{where}: {text!r} is not a number") from None


def _known(metric: str, where: str) -> str:
    if metric not in METRICS:
        from .errors import close_matches

        raise BadInput(f"{where}: unknown metric {metric!r}",
                       hint=close_matches(metric, list(METRICS)))
    return metric


def parse_criteria(spec: Any) -> list[Criterion]:
    """Criteria from a file path, a list of "METRIC OP NUMBER" strings or a mapping."""
    if spec is None:
        return [Criterion("errors", "==", 0)]
    where = "criteria"
    if isinstance(spec, str | Path) and not _CRITERION.match(str(spec)):
        path = Path(spec).expanduser()
        where = str(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise BadInput(f"cannot read the criteria file {path}: {exc.strerror}") from None
        import yaml  # YAML is a superset of JSON: one parser for both

        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise BadInput(f"{path}: not valid YAML/JSON: {exc}") from None
        if isinstance(spec, dict) and "criteria" in spec:
            spec = spec["criteria"]
    elif isinstance(spec, str):
        spec = [spec]
    out: list[Criterion] = []
    if isinstance(spec, Mapping):
        for metric, rule in spec.items():
            metric = _known(str(metric), where)
            if isinstance(rule, int | float) and not isinstance(rule, bool):
                op = ">=" if metric in HIGHER_IS_BETTER else "<="
                out.append(Criterion(metric, op, float(rule)))
                continue
            m = _CRITERION.match(f"{metric} {rule}")
            if not m:
                raise BadInput(f"{where}: {metric}: expected 'OP NUMBER' (e.g. '<= 2'), "
                               f"got {rule!r}")
            out.append(Criterion(metric, m.group(2), _number(m.group(3), where)))
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        for item in spec:
            m = _CRITERION.match(str(item))
            if not m:
                raise BadInput(f"{where}: expected 'METRIC OP NUMBER' (e.g. 'p95_latency_s <= 2'),"
                               f" got {item!r}")
            out.append(Criterion(_known(m.group(1), where), m.group(2),
                                 _number(m.group(3), where)))
    else:
        raise BadInput(f"{where}: criteria must be a list of 'METRIC OP NUMBER' or a mapping",
                       hint="e.g. criteria: [\"p95_latency_s <= 2\", \"errors == 0\"]")
    if not out:
        raise BadInput(f"{where}: no criteria given")
    return out


# ---------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(samples: Sequence[RequestSample], duration_s: float) -> dict[str, Any]:
    ok = [s for s in samples if s.error is None and s.latency_s is not None]
    lat = [s.latency_s for s in ok if s.latency_s is not None]
    ttft = [s.ttft_s for s in ok if s.ttft_s is not None]
    tokens = sum(s.tokens for s in ok)
    per_req = [s.tokens / (s.latency_s - s.ttft_s) for s in ok
               if s.ttft_s is not None and s.latency_s is not None and s.tokens > 1
               and s.latency_s > s.ttft_s]
    errors = len(samples) - len(ok)

    def r(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 4)

    return {
        "requests": len(samples), "completed": len(ok), "errors": errors,
        "error_rate": round(errors / len(samples), 4) if samples else 0.0,
        "duration_s": round(duration_s, 4),
        "throughput_rps": round(len(ok) / duration_s, 4) if duration_s > 0 else 0.0,
        "p50_latency_s": r(percentile(lat, 50)), "p95_latency_s": r(percentile(lat, 95)),
        "p99_latency_s": r(percentile(lat, 99)),
        "mean_latency_s": r(sum(lat) / len(lat)) if lat else None,
        "max_latency_s": r(max(lat)) if lat else None,
        "p50_ttft_s": r(percentile(ttft, 50)), "p95_ttft_s": r(percentile(ttft, 95)),
        "p99_ttft_s": r(percentile(ttft, 99)),
        "mean_ttft_s": r(sum(ttft) / len(ttft)) if ttft else None,
        "output_tokens": tokens,
        "tokens_per_s": round(tokens / duration_s, 2) if duration_s > 0 else 0.0,
        "p50_tokens_per_s_per_request": r(percentile(per_req, 50)),
    }


# ---------------------------------------------------------------------- the report


class BenchReport:
    """A finished load test: metrics, evaluation, samples and where they were written."""

    def __init__(self, report: dict[str, Any], evaluation: dict[str, Any],
                 report_path: Path, evaluation_path: Path) -> None:
        self.report = report
        self.evaluation = evaluation
        self.report_path = report_path
        self.evaluation_path = evaluation_path

    @property
    def metrics(self) -> dict[str, Any]:
        return self.report["metrics"]

    @property
    def passed(self) -> bool:
        return bool(self.evaluation["passed"])

    @property
    def samples(self) -> list[dict[str, Any]]:
        return self.report["samples"]

    def __getitem__(self, metric: str) -> Any:
        return self.metrics[metric]

    def summary_lines(self) -> list[str]:
        m, cfg = self.metrics, self.report["config"]

        def f(x: Any, unit: str = "s") -> str:
            return "-" if x is None else f"{x:.3f} {unit}".rstrip()

        lines = [
            f"load test of {self.report['session']['name']}: {m['requests']} requests, "
            f"concurrency {cfg['concurrency']}, max_tokens {cfg['max_tokens']}",
            f"  completed {m['completed']}, errors {m['errors']}, "
            f"duration {f(m['duration_s'])}, throughput {m['throughput_rps']:.2f} req/s",
            f"  latency   p50 {f(m['p50_latency_s'])}  p95 {f(m['p95_latency_s'])}  "
            f"p99 {f(m['p99_latency_s'])}",
            f"  first token p50 {f(m['p50_ttft_s'])}  p95 {f(m['p95_ttft_s'])}  "
            f"p99 {f(m['p99_ttft_s'])}",
            f"  tokens {m['output_tokens']}, {m['tokens_per_s']:.1f} tokens/s",
            f"evaluation: {'PASSED' if self.passed else 'FAILED'}",
        ]
        for c in self.evaluation["criteria"]:
            lines.append(f"  [{'pass' if c['passed'] else 'FAIL'}] {c['criterion']} "
                         f"(measured {c['value']})")
        lines.append(f"written: {self.report_path}, {self.evaluation_path}")
        return lines

    def __repr__(self) -> str:
        return "\n".join(self.summary_lines())

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def figure(self) -> Any:
        """A matplotlib Figure: latency of each request over the test, and a latency histogram."""
        from matplotlib.figure import Figure

        samples = [s for s in self.samples if s["error"] is None]
        fig = Figure(figsize=(9, 3.2), layout="constrained")
        ax1, ax2 = fig.subplots(1, 2)
        starts = [s["start_s"] for s in samples]
        ax1.scatter(starts, [s["latency_s"] for s in samples], s=12, label="latency")
        ax1.scatter(starts, [s["ttft_s"] for s in samples], s=12, marker="x",
                    label="first token")
        ax1.set_xlabel("request start (s)")
        ax1.set_ylabel("seconds")
        ax1.set_title("per request")
        ax1.legend(loc="upper left", fontsize="small")
        ax2.hist([s["latency_s"] for s in samples], bins=min(20, max(5, len(samples) // 3)))
        for p, style in ((50, "-"), (95, "--"), (99, ":")):
            value = self.metrics.get(f"p{p}_latency_s")
            if value is not None:
                ax2.axvline(value, color="black", linestyle=style, label=f"p{p}")
        ax2.set_xlabel("latency (s)")
        ax2.set_title("latency distribution")
        ax2.legend(fontsize="small")
        verdict = "passed" if self.passed else "FAILED"
        fig.suptitle(f"{self.report['session']['name']}: {self.metrics['throughput_rps']:.2f} "
                     f"req/s, {self.metrics['tokens_per_s']:.0f} tokens/s ({verdict})")
        return fig

    def png(self) -> bytes | None:
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
        except ImportError:
            return None
        fig = self.figure()
        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        return buf.getvalue()

    def _repr_html_(self) -> str:
        m = self.metrics
        colour = "#2e7d32" if self.passed else "#c62828"
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(m[k]))}</td></tr>"
                       for k in METRICS if k in m)
        crit = "".join(
            f'<li style="color:{"#2e7d32" if c["passed"] else "#c62828"}">'
            f'{"pass" if c["passed"] else "FAIL"}: {html.escape(c["criterion"])} '
            f"(measured {html.escape(str(c['value']))})</li>" for c in self.evaluation["criteria"])
        png = self.png()
        img = (f'<img alt="load test plot" src="data:image/png;base64,'
               f'{base64.b64encode(png).decode()}"/>' if png else "")
        return (f'<div><b>load test of {html.escape(self.report["session"]["name"])}</b> '
                f'<span style="background:{colour};color:white;border-radius:4px;'
                f'padding:1px 6px">{"passed" if self.passed else "failed"}</span>'
                f"<ul>{crit}</ul>{img}<details><summary>all metrics</summary><table>{rows}"
                f"</table></details><small>{html.escape(str(self.report_path))}, "
                f"{html.escape(str(self.evaluation_path))}</small></div>")


# ---------------------------------------------------------------------- running


def run_bench(facade: Any, key: str, *, requests: int = 20, concurrency: int = 4,
              max_tokens: int = 64, prompt: str | Sequence[str] = DEFAULT_PROMPT,
              temperature: float | None = None, criteria: Any = None,
              out: str | Path | None = None, progress: bool = True,
              timeout: float | None = 600.0) -> BenchReport:
    """Load-test a ready session with `requests` streamed chat requests, `concurrency` at once.

    `prompt` is one prompt or a list cycled through. `timeout` bounds the whole test (requests
    not started by then count as errors). Criteria are checked before anything is sent.
    """
    if requests < 1 or concurrency < 1 or max_tokens < 1:
        raise BadInput("requests, concurrency and max_tokens must be at least 1")
    checks = parse_criteria(criteria)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise BadInput("prompt: give at least one prompt")
    out_dir = Path(out or ".").expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    session = check_ready(facade, key)
    params: dict[str, Any] = {"max_tokens": max_tokens}
    if temperature is not None:
        params["temperature"] = temperature
    samples = [RequestSample(i, 0.0) for i in range(requests)]
    bar = progress_bar(requests, f"load test {session.name}", progress)
    started_at = time.time()
    t0 = time.perf_counter()
    deadline = None if timeout is None else t0 + timeout
    stop = threading.Event()

    def one(sample: RequestSample) -> None:
        sample.start_s = time.perf_counter() - t0
        if stop.is_set() or (deadline is not None and time.perf_counter() > deadline):
            sample.error = "not started: the load test's time limit was reached"
            return
        begin = time.perf_counter()
        try:
            for delta in facade.stream(session.id, prompts[sample.index % len(prompts)],
                                       **params):
                if delta:
                    if sample.ttft_s is None:
                        sample.ttft_s = time.perf_counter() - begin
                    sample.tokens += 1
            sample.latency_s = time.perf_counter() - begin
        except HpcserveError as exc:
            sample.error = exc.message
        except Exception as exc:  # count it, keep measuring the others
            sample.error = f"{type(exc).__name__}: {exc}"

    pool = ThreadPoolExecutor(max_workers=min(concurrency, requests),
                              thread_name_prefix="hpcserve-bench")
    try:
        for _ in as_completed([pool.submit(one, s) for s in samples]):
            bar.update(1)
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
    duration = time.perf_counter() - t0

    metrics = summarize(samples, duration)
    report = {
        "tool": f"hpcserve-jupyter {__version__}",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_at)),
        "session": {"id": session.id, "name": session.name, "recipe": session.recipe,
                    "backend": session.backend, "target": session.target,
                    "model": session.model},
        "config": {"requests": requests, "concurrency": concurrency, "max_tokens": max_tokens,
                   "temperature": temperature, "prompts": prompts},
        "metrics": metrics,
        "samples": [asdict(s) for s in samples],
    }
    results = [c.check(metrics) for c in checks]
    evaluation = {"passed": all(r["passed"] for r in results), "criteria": results,
                  "session": session.name, "report": REPORT_FILE}
    report_path = out_dir / REPORT_FILE
    evaluation_path = out_dir / EVALUATION_FILE
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    evaluation_path.write_text(json.dumps(evaluation, indent=2) + "\n")
    return BenchReport(report, evaluation, report_path, evaluation_path)
