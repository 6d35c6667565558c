"""P-jobs-vllm: a batch job's two paths on real vLLM (the CPU build in .venv-vllm), the same
200-line chat file, whole jobs as users run them (`submit_job(..., runner=...)` on the local
target, engine start to engine stop):

- generic: the job driver starts `vllm serve`, waits for its health check and sends the lines
  itself (8 in flight, keep-alive connections), appending each answer as it arrives;
- engine: the driver runs `vllm run-batch` over the file, which loads the model, answers the
  whole file in one process and writes every answer at the end.

Reported: each run's wall time (submit to done) and the time from the job's `running` to its
end (the engine loaded), and the ratio generic / engine of the means (> 1: run-batch faster).
Runs alternate (generic, engine, engine, generic) so a machine that drifts favours neither.
The faster path is the default of `runner="auto"` (Backend.batch_runner_default); run-batch
gives no progress until it ends and keeps nothing of a cancelled run, which counts too.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import write

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "backends"))

from real_engines import hf_checkpoint  # noqa: E402

from facade_fixtures import make_facade  # noqa: E402
from hpcserve_jupyter.jobs import JobState  # noqa: E402

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
LINES, CONCURRENCY, MAX_TOKENS = 200, 8, 16
ORDER = ("generic", "engine", "engine", "generic")


def batch_file(path: Path) -> Path:
    with open(path, "w") as fh:
        for i in range(LINES):
            fh.write(json.dumps({"custom_id": f"b{i}", "method": "POST",
                                 "url": "/v1/chat/completions",
                                 "body": {"messages": [{"role": "user",
                                                        "content": f"Write a line about {i}."}],
                                          "max_tokens": MAX_TOKENS, "temperature": 0}}) + "\n")
    return path


def one_run(tmp: Path, model: Path, inp: Path, runner: str, n: int) -> dict[str, float]:
    targets = {"local": {"kind": "local", "python": str(VLLM_PYTHON)}}
    with make_facade(tmp / f"home-{n}", target_configs=targets) as hp:
        started = time.monotonic()
        job = hp.submit_job("smollm2-135m-hf", inp, backend="vllm", runner=runner,
                            concurrency=CONCURRENCY, model=str(model),
                            **{"engine_args.enforce-eager": True,
                               "env.VLLM_CPU_KVCACHE_SPACE": "1", "env.HF_HUB_OFFLINE": "1"})
        final = job.wait(timeout=3600)
        wall = time.monotonic() - started
        if final.state != JobState.DONE or final.done != LINES or final.failed:
            raise SystemExit(f"{runner} run {n}: {final.state} {final.done}/{LINES}, "
                             f"{final.failed} failed: {final.reason}\n{final.log_tail}")
        running = (final.ended_at or 0) - (final.running_at or final.created_at)
    print(f"  {runner:8} wall {wall:6.1f} s, running phase {running:6.1f} s", flush=True)
    return {"wall_s": round(wall, 2), "running_s": round(running, 2)}


def main() -> dict:
    if not VLLM_PYTHON.exists():
        raise SystemExit(f"{VLLM_PYTHON} is missing: run scripts/setup-vllm-env.sh")
    with tempfile.TemporaryDirectory(prefix="p-jobs-vllm-") as tmpdir:
        tmp = Path(tmpdir)
        model = hf_checkpoint(VLLM_PYTHON, tmp, "run scripts/setup-vllm-env.sh")
        inp = batch_file(tmp / "in.jsonl")
        print(f"cores: {os.cpu_count()}; {LINES} chat lines, max_tokens {MAX_TOKENS}, "
              f"generic runner at concurrency {CONCURRENCY}", flush=True)
        runs = [(runner, one_run(tmp, model, inp, runner, n)) for n, runner in enumerate(ORDER)]
    mean = {r: sum(x["wall_s"] for k, x in runs if k == r) / ORDER.count(r)
            for r in ("generic", "engine")}
    ratio = mean["generic"] / mean["engine"]
    faster = "engine" if ratio > 1 else "generic"
    print(f"mean wall: generic {mean['generic']:.1f} s, engine (run-batch) "
          f"{mean['engine']:.1f} s: generic/engine = {ratio:.3f}; faster: {faster}")
    result = {"cores": os.cpu_count(), "lines": LINES, "max_tokens": MAX_TOKENS,
              "concurrency": CONCURRENCY, "runs": [{"runner": r, **x} for r, x in runs],
              "mean_wall_s": {k: round(v, 2) for k, v in mean.items()},
              "ratio_generic_over_engine": round(ratio, 3), "faster": faster}
    print("wrote", write("p_jobs_vllm", result))
    return result


if __name__ == "__main__":
    main()
