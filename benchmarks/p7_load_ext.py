"""P7: wall time of `ipython -c "%load_ext hpcserve_jupyter"` against bare `ipython -c "pass"`
in the same run (interleaved). Goal: < 0.3 s over bare IPython: loading the extension only
registers the magics; the facade, the manager and ipywidgets load on first use."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import stats, write

RUNS = 15
GOAL_S = 0.3


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env)
    return time.perf_counter() - start


def main() -> dict:
    ipython = str(Path(sys.executable).with_name("ipython"))
    with tempfile.TemporaryDirectory() as tmp:
        # A fresh IPython profile dir, so no user startup files or history skew either case.
        env = {**os.environ, "IPYTHONDIR": tmp}
        cases = {
            "baseline: ipython -c pass": [ipython, "--no-banner", "-c", "pass"],
            "ipython -c %load_ext hpcserve_jupyter": [ipython, "--no-banner", "-c",
                                                      "%load_ext hpcserve_jupyter"],
        }
        timed(cases["baseline: ipython -c pass"], env)  # warm the profile dir and file cache
        samples: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(RUNS):  # interleaved, so drift hits both cases alike
            for name, argv in cases.items():
                samples[name].append(timed(argv, env))
    base = stats(samples["baseline: ipython -c pass"])["median"]
    out = {}
    for name, s in samples.items():
        st = stats(s)
        out[name] = {"median_s": round(st["median"], 4), "p95_s": round(st["p95"], 4),
                     "over_baseline_s": round(st["median"] - base, 4),
                     "ratio": round(st["median"] / base, 2)}
        print(f"{name:40} median {st['median'] * 1000:7.1f} ms   over bare ipython "
              f"{(st['median'] - base) * 1000:7.1f} ms   ratio {st['median'] / base:5.2f}x")
    over = out["ipython -c %load_ext hpcserve_jupyter"]["over_baseline_s"]
    result = {"runs": RUNS, "cases": out, "goal_s": GOAL_S, "over_baseline_s": over,
              "goal_met": over < GOAL_S}
    print(f"%load_ext overhead {over * 1000:.1f} ms (goal < {GOAL_S * 1000:.0f} ms): "
          f"{'met' if over < GOAL_S else 'NOT met'}")
    print("wrote", write("p7_load_ext", result))
    return result


if __name__ == "__main__":
    main()
