"""P-jobs: the batch-job driver (src/hpcserve_jupyter/jobrun.py, issue 15), the real file run
as a subprocess the way a target runs it (`python jobrun.py --job DIR/job.json --host H --port P
-- ENGINE ARGV`).

- Throughput: 500 chat lines (max_tokens 8, temperature 0) sent by the driver's worker threads
  to ONE llama.cpp engine on SmolLM2-135M started here once, against the baseline: the same 500
  requests sent by a plain asyncio httpx.AsyncClient at the same concurrency to the same engine.
  The driver's engine command is `sleep` (it keeps running, the driver stops it at the end)
  while --host/--port point at the running engine, so the driver's health wait passes at once
  and only its sending is compared. Its sending time is the output file's last write minus the
  `running_at` it records in progress.json. Runs in the order baseline, runner, runner,
  baseline (an engine that drifts over the run favours neither). Goal: runner >= 0.95x.
- Memory: peak RSS of the whole driver (engine start, health wait, sending, engine stop) for a
  100,000-line input, against a stand-in engine that answers every POST at once with a small
  chat completion (a benchmark of the driver, not of an engine). Peak = the driver's own VmHWM
  (/proc/PID/status, sampled every 0.1 s until it exits; not wait4's ru_maxrss, which counts
  the benchmark's own memory: the child shares it until exec). Baselines: the VmHWM a bare
  interpreter reports of itself, and one that first imports the driver. Goal: < 150 MB, and
  flat (RSS at 10% of the lines vs at 90%).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
from common import write

from hpcserve_jupyter import jobrun
from hpcserve_jupyter.resolve import resolve
from hpcserve_jupyter.spec import HOST, PORT, PYTHON, render_argv
from hpcserve_jupyter.targets.local import free_port

RECIPE = "smollm2-135m"
LINES, CONCURRENCY, MAX_TOKENS = 500, 4, 8
ORDER = ("baseline", "runner", "runner", "baseline")
MEMORY_LINES = 100_000
THROUGHPUT_GOAL, RSS_GOAL_MB = 0.95, 150.0
DRIVER = Path(jobrun.__file__)
KEY = "p-jobs-bench-key"

# The memory run's engine: HTTP/1.1 keep-alive on asyncio, 200 with a small chat completion to
# every POST and 200 to every GET (the health path); fast enough that the driver is the load.
STAND_IN = r"""
import asyncio, sys
BODY = (b'{"id":"chatcmpl-0","object":"chat.completion","created":0,"model":"stand-in",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},'
        b'"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,'
        b'"total_tokens":10}}')
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
POST = HEAD + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
GET = HEAD + b"2\r\n\r\n{}"
async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            writer.write(POST if head.startswith(b"POST") else GET)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def chat_lines(n: int) -> Iterator[dict[str, Any]]:
    """n distinct chat requests in the OpenAI Batch format."""
    return ({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": RECIPE, "max_tokens": MAX_TOKENS, "temperature": 0,
                      "messages": [{"role": "user",
                                    "content": f"Say a word about the number {i}."}]}}
            for i in range(n))


def write_job(jobdir: Path, lines: Iterable[dict[str, Any]], health: str) -> Path:
    jobdir.mkdir()
    total = 0
    with open(jobdir / "input.jsonl", "w") as fh:
        for line in lines:
            fh.write(json.dumps(line) + "\n")
            total += 1
    (jobdir / "job.json").write_text(json.dumps({
        "kind": "batch", "input": "input.jsonl", "output": "output.jsonl", "total": total,
        "concurrency": CONCURRENCY, "health_path": health, "model": RECIPE,
        "time_limit_s": 3600}))
    return jobdir / "job.json"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) of a live process; {} once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in text.splitlines())
            if k in ("VmRSS", "VmHWM")}


def done_count(progress: Path) -> int | None:
    try:
        return int(json.loads(progress.read_text())["done"])
    except (OSError, ValueError, KeyError):
        return None


def measured(argv: list[str], *, env: dict[str, str] | None = None, log: Path | None = None,
             progress: Path | None = None) -> dict[str, Any]:
    """Run argv to its end, sampling its RSS (and the job's `done`) every 0.1 s: its exit code,
    wall time and own peak RSS (VmHWM, the driver alone, not the engine it runs)."""
    start = time.perf_counter()
    with open(log or os.devnull, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    hwm, samples = 0, []
    try:
        while True:
            status = proc_status(proc.pid)
            hwm = max(hwm, status.get("VmHWM", 0))
            if progress is not None and "VmRSS" in status:
                samples.append((done_count(progress), status["VmRSS"]))
            try:
                proc.wait(0.1)
                break
            except subprocess.TimeoutExpired:
                continue
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return {"code": proc.returncode, "wall_s": time.perf_counter() - start, "hwm_kb": hwm,
            "samples": samples}


def self_reported_hwm(code: str) -> float:
    """MB: the VmHWM a fresh interpreter reports of itself after running `code`."""
    probe = ("print([ln for ln in open('/proc/self/status').read().splitlines() "
             "if ln.startswith('VmHWM')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", f"{code}\n{probe}"], capture_output=True,
                         text=True, check=True).stdout
    return int(out.split()[-1]) / 1024


def check_output(jobdir: Path, n: int) -> int:
    """The number of answered lines with status 200; raises unless every line came back."""
    rows = [json.loads(ln) for ln in (jobdir / "output.jsonl").read_text().splitlines()]
    ids = {r["custom_id"] for r in rows}
    if len(rows) != n or len(ids) != n:
        raise RuntimeError(f"{jobdir}: {len(rows)} output lines ({len(ids)} ids), not {n}")
    return sum(r["response"] is not None and r["response"]["status_code"] == 200 for r in rows)


def send_phase_s(jobdir: Path) -> float:
    """From the driver's `running_at` (health passed) to its last output write."""
    running_at = json.loads((jobdir / "progress.json").read_text())["running_at"]
    return (jobdir / "output.jsonl").stat().st_mtime_ns / 1e9 - running_at


def driver(jobdir: Path, job: Path, port: int, engine: list[str], env: dict[str, str],
           progress: bool = False) -> dict[str, Any]:
    run = measured([sys.executable, str(DRIVER), "--job", str(job), "--host", "127.0.0.1",
                    "--port", str(port), "--", *engine], env=env, log=jobdir / "driver.log",
                   progress=jobdir / "progress.json" if progress else None)
    if run["code"] != 0:
        raise RuntimeError(f"the driver exited with {run['code']}:\n"
                           + (jobdir / "driver.log").read_text()[-2000:])
    return run


# ---------------------------------------------------------------------- throughput


async def baseline(base: str, lines: list[dict[str, Any]]) -> tuple[float, int]:
    """The same requests from CONCURRENCY coroutines on one httpx.AsyncClient (keep-alive):
    (seconds, answers with status 200)."""
    pending = iter(lines)
    ok = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal ok
        for line in pending:
            r = await client.post(line["url"], json=line["body"])
            r.json()
            ok += r.status_code == 200

    limits = httpx.Limits(max_connections=CONCURRENCY)
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {KEY}"},
                                 timeout=600, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return time.perf_counter() - start, ok


def start_engine(tmp: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    spec = resolve(RECIPE, None, {})
    port = free_port("127.0.0.1")
    argv = render_argv(spec, {PORT: str(port), HOST: "127.0.0.1", PYTHON: sys.executable})
    log = open(tmp / "engine.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, env=dict(os.environ, API_KEY=KEY), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(base + spec.health_path, headers={"Authorization": f"Bearer {KEY}"},
                         timeout=2, trust_env=False).status_code == 200:
                return proc, port, spec.health_path
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the engine did not start:\n"
                               + (tmp / "engine.log").read_text()[-2000:])
        time.sleep(0.2)


def throughput(tmp: Path) -> dict[str, Any]:
    lines = list(chat_lines(LINES))
    engine, port, health = start_engine(tmp)
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HPCSERVE_JOB_KEY=KEY)
    runs: list[dict[str, Any]] = []
    try:
        asyncio.run(baseline(base, list(chat_lines(8))))  # warm-up: the engine's first answers
        for i, which in enumerate(ORDER):
            if which == "baseline":
                took, ok = asyncio.run(baseline(base, lines))
                runs.append({"client": which, "s": took, "ok": ok})
            else:
                jobdir = tmp / f"throughput-{i}"
                run = driver(jobdir, write_job(jobdir, lines, health), port,
                             ["sleep", "100000"], env)
                runs.append({"client": which, "s": send_phase_s(jobdir),
                             "ok": check_output(jobdir, LINES),
                             "process_wall_s": round(run["wall_s"], 3)})
            print(f"  {which:8} {LINES / runs[-1]['s']:6.2f} requests/s "
                  f"({runs[-1]['s']:.1f} s, {runs[-1]['ok']} answered 200)", flush=True)
    finally:
        os.killpg(engine.pid, 9)
        engine.wait()
    for r in runs:
        if r["ok"] != LINES:
            raise RuntimeError(f"{r['client']}: {r['ok']} of {LINES} requests answered 200")
        r["requests_per_s"] = round(LINES / r["s"], 3)
        r["s"] = round(r["s"], 3)

    def rate(client: str) -> float:
        mine = [r for r in runs if r["client"] == client]
        return LINES * len(mine) / sum(r["s"] for r in mine)

    ratio = rate("runner") / rate("baseline")
    return {"lines": LINES, "concurrency": CONCURRENCY, "max_tokens": MAX_TOKENS,
            "order": list(ORDER), "runs": runs,
            "baseline_requests_per_s": round(rate("baseline"), 3),
            "runner_requests_per_s": round(rate("runner"), 3), "ratio": round(ratio, 3),
            "goal": THROUGHPUT_GOAL, "goal_met": ratio >= THROUGHPUT_GOAL,
            "engine": f"llama.cpp (llama-cpp-python server) {RECIPE} on CPU, started once",
            "baseline": "httpx.AsyncClient, CONCURRENCY coroutines, keep-alive, same bodies",
            "runner_time": "output.jsonl mtime - progress.json running_at (sending only)"}


# ---------------------------------------------------------------------- memory


def memory(tmp: Path) -> dict[str, Any]:
    mb = 1024
    bare = self_reported_hwm("pass")
    imports = self_reported_hwm(f"import runpy; runpy.run_path({str(DRIVER)!r})")
    jobdir = tmp / "memory"
    job = write_job(jobdir, chat_lines(MEMORY_LINES), "/health")
    port = free_port("127.0.0.1")
    run = driver(jobdir, job, port, [sys.executable, "-c", STAND_IN, str(port)],
                 dict(os.environ), progress=True)
    ok = check_output(jobdir, MEMORY_LINES)
    if ok != MEMORY_LINES:
        raise RuntimeError(f"{ok} of {MEMORY_LINES} lines answered 200 by the stand-in")
    send = send_phase_s(jobdir)
    counted = [(d, rss) for d, rss in run["samples"] if d is not None]
    early = next((rss for d, rss in counted if d >= MEMORY_LINES // 10), None)
    late = next((rss for d, rss in reversed(counted) if d >= MEMORY_LINES * 9 // 10), None)
    step = max(1, len(counted) // 20)
    peak = run["hwm_kb"] / mb
    return {
        "lines": MEMORY_LINES, "concurrency": CONCURRENCY,
        "input_mb": round((jobdir / "input.jsonl").stat().st_size / mb / mb, 1),
        "output_mb": round((jobdir / "output.jsonl").stat().st_size / mb / mb, 1),
        "driver_peak_rss_mb": round(peak, 1),
        "rss_at_10pct_mb": early and round(early / mb, 1),
        "rss_at_90pct_or_later_mb": late and round(late / mb, 1),
        "bare_interpreter_rss_mb": round(bare, 1),
        "interpreter_with_driver_imports_rss_mb": round(imports, 1),
        "ratio_to_bare_interpreter": round(peak / bare, 2),
        "added_over_bare_interpreter_mb": round(peak - bare, 1),
        "lines_per_s_sending": round(MEMORY_LINES / send, 1),
        "driver_wall_s": round(run["wall_s"], 2),
        "rss_samples_done_mb": [[d, round(rss / mb, 1)] for d, rss in counted[::step]],
        "goal_mb": RSS_GOAL_MB, "goal_met": peak < RSS_GOAL_MB,
        "engine": "stand-in: asyncio HTTP/1.1 keep-alive, a fixed chat completion per POST",
        "peak": "the driver's VmHWM (/proc/PID/status) sampled every 0.1 s until it exits"}


def main() -> dict:
    print(f"cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="p-jobs-") as tmpdir:
        tmp = Path(tmpdir)
        print(f"throughput: {LINES} chat lines, concurrency {CONCURRENCY}, max_tokens "
              f"{MAX_TOKENS}, one llama.cpp {RECIPE} engine", flush=True)
        tp = throughput(tmp)
        print(f"  runner {tp['runner_requests_per_s']:.2f} requests/s vs httpx baseline "
              f"{tp['baseline_requests_per_s']:.2f}: ratio {tp['ratio']:.3f} "
              f"(goal >= {THROUGHPUT_GOAL}): {'met' if tp['goal_met'] else 'NOT met'}")
        print(f"memory: the driver over {MEMORY_LINES} lines against a stand-in engine",
              flush=True)
        mem = memory(tmp)
    print(f"  driver peak RSS {mem['driver_peak_rss_mb']} MB, RSS at 10% of the lines "
          f"{mem['rss_at_10pct_mb']} MB, at >=90% "
          f"{mem['rss_at_90pct_or_later_mb']} MB; bare interpreter "
          f"{mem['bare_interpreter_rss_mb']} MB, with the driver's imports "
          f"{mem['interpreter_with_driver_imports_rss_mb']} MB; "
          f"{mem['lines_per_s_sending']:.0f} lines/s; goal < {RSS_GOAL_MB:.0f} MB: "
          f"{'met' if mem['goal_met'] else 'NOT met'}")
    result = {"cores": os.cpu_count(), "throughput": tp, "memory": mem,
              "goal_met": tp["goal_met"] and mem["goal_met"]}
    print("wrote", write("p_jobs", result))
    return result


if __name__ == "__main__":
    main()
