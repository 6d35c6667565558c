"""Run the benchmarks: `python benchmarks/run.py [NAME ...]` (default: all). Each prints its
figures and writes benchmarks/results/NAME.json (with the commit and the CPU, common.write).
P2 and P3 start the SLURM + sshd test cluster if it is not running (root). A benchmark that
fails does not stop the others; the exit status says whether all ran."""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ALL = ["p5_import_time", "p4_launch_overhead", "p1_proxy", "p6_gateway", "p7_load_ext",
       "p2_tunnel", "p3_slurm_tick", "p_jobs"]


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in ALL]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(ALL)}")
        return 2
    outcome: dict[str, str] = {}
    for name in names or ALL:
        print(f"== {name}", flush=True)
        start = time.monotonic()
        try:
            result = importlib.import_module(name).main()
        except (Exception, SystemExit) as exc:  # a crash is reported, the others still run
            traceback.print_exc()
            outcome[name] = f"did not run to the end: {exc}"
            continue
        goal = result.get("goal_met") if isinstance(result, dict) else None
        outcome[name] = {True: "goal met", False: "goal NOT met", None: "done"}[goal] + \
            f" ({time.monotonic() - start:.0f} s)"
    print("== summary")
    for name, text in outcome.items():
        print(f"{name:20} {text}")
    return 0 if all(not t.startswith("did not") for t in outcome.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
