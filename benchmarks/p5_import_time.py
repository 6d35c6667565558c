"""P5: wall time of `import hpcserve_jupyter`, `import hpcserve_jupyter.api` and
`hpcserve --help`, against bare `python -c pass` in the same run. Goal: < 0.3 s over bare Python."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from common import stats, write

RUNS = 15


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> dict:
    py = sys.executable
    cases = {
        "baseline: python -c pass": [py, "-c", "pass"],
        "import hpcserve_jupyter": [py, "-c", "import hpcserve_jupyter"],
        "import hpcserve_jupyter.api": [py, "-c", "import hpcserve_jupyter.api"],
        "hpcserve --help": [str(Path(py).with_name("hpcserve")), "--help"],
    }
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(RUNS):  # interleaved, so drift hits every case alike
        for name, argv in cases.items():
            samples[name].append(timed(argv))
    base = stats(samples["baseline: python -c pass"])["median"]
    out = {}
    for name, s in samples.items():
        st = stats(s)
        out[name] = {"median_s": round(st["median"], 4), "over_baseline_s":
                     round(st["median"] - base, 4), "ratio": round(st["median"] / base, 2)}
        print(f"{name:32} median {st['median'] * 1000:7.1f} ms   over bare python "
              f"{(st['median'] - base) * 1000:7.1f} ms   ratio {st['median'] / base:5.2f}x")
    goal = max(v["over_baseline_s"] for k, v in out.items() if k != "baseline: python -c pass")
    result = {"runs": RUNS, "cases": out, "goal_s": 0.3, "worst_over_baseline_s": goal,
              "goal_met": goal < 0.3}
    print(f"worst overhead {goal * 1000:.1f} ms (goal < 300 ms): "
          f"{'met' if goal < 0.3 else 'NOT met'}")
    print("wrote", write("p5_import_time", result))
    return result


if __name__ == "__main__":
    main()
