"""P4: launch overhead = time until hpcserve reports `ready` minus the engine's own time to its
first healthy answer, measured by starting the same engine command directly and polling its
health endpoint every 10 ms, in the same run. Goal: < 1 s."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

import httpx
from common import stats, write

from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.resolve import resolve
from hpcserve_jupyter.spec import HOST, PORT, PYTHON, render_argv
from hpcserve_jupyter.targets.local import free_port

RUNS = 5
RECIPE = "smollm2-135m"


def direct_start() -> float:
    """The engine alone: spawn its command, poll health every 10 ms, return seconds to 200."""
    import sys

    spec = resolve(RECIPE)
    port = free_port("127.0.0.1")
    argv = render_argv(spec, {PORT: str(port), HOST: "127.0.0.1", PYTHON: sys.executable})
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}{spec.health_path}"
        while True:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError("the engine exited during the benchmark")
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def managed_start(h: Hpcserve) -> float:
    start = time.perf_counter()
    s = h.launch(RECIPE, timeout=120)
    took = time.perf_counter() - start
    assert s.state == "ready", s.reason
    h.stop(s.id)
    return took


def main() -> dict:
    with tempfile.TemporaryDirectory() as home:
        os.environ["HPCSERVE_HOME"] = home
        h = Hpcserve(poll_interval=2.0)  # the default interval: readiness comes from probes
        try:
            direct, managed = [], []
            for _ in range(RUNS):
                direct.append(direct_start())
                managed.append(managed_start(h))
        finally:
            h.close()
    d, m = stats(direct), stats(managed)
    overhead = m["median"] - d["median"]
    result = {"recipe": RECIPE, "runs": RUNS, "direct_engine_s": d, "hpcserve_launch_s": m,
              "overhead_median_s": round(overhead, 3), "ratio": round(m["median"] / d["median"], 3),
              "goal_s": 1.0, "goal_met": overhead < 1.0, "baseline": "same engine argv started "
              "directly, health polled every 10 ms"}
    print(f"engine alone to healthy : median {d['median']:.3f} s (min {d['min']:.3f})")
    print(f"hpcserve launch to ready: median {m['median']:.3f} s (min {m['min']:.3f})")
    print(f"launch overhead         : {overhead:.3f} s (goal < 1 s): "
          f"{'met' if overhead < 1.0 else 'NOT met'}; ratio {result['ratio']}x")
    print("wrote", write("p4_launch_overhead", result))
    return result


if __name__ == "__main__":
    main()
