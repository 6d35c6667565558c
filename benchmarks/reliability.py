"""Reliability figures (GitHub issue 8): `python benchmarks/reliability.py [PYTEST ARGS...]`.

Runs `pytest tests/reliability` (real engines, real `jupyter server` subprocesses, the SLURM
test cluster), which records each figure in $HPCSERVE_RELIABILITY_OUT (default: a scratch file
of this run); then prints the figures and writes them, with the pytest outcome, the commit and
the CPU, to benchmarks/results/reliability.json. Exits with pytest's status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import provenance

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ORDER = ["R1", "R-launch-kill", "R-shared-state", "R2", "R3", "R4", "R5", "R6", "R7", "R8",
         "R9", "R10", "R11", "R14"]
TITLES = {
    "R1": "kill -9 of the Jupyter server with ready and starting sessions (local, SLURM, "
          "Tapis), restart",
    "R2": "SSH connection cut mid-stream",
    "R3": "slurmctld stopped for 60 s",
    "R4": "engine process killed (local, SLURM, Tapis)",
    "R5": "property-based fuzzing of inputs",
    "R6": "shell metacharacters in every field reaching a shell",
    "R7": "secrets in logs, state and errors; file modes",
    "R8": "unauthenticated requests and proxy steering",
    "R9": "autostop of an idle session",
    "R10": "50 concurrent streams through the proxy; 200 sessions in store and monitor",
    "R11": "soak: launch -> prompts (proxy, gateway) -> stop cycles on local, SLURM and "
           "Tapis in one Jupyter server; RSS, fds, threads, SSH channels, tunnels, leftovers",
    "R14": "a ready engine that hangs (SIGSTOP) on local and on the SLURM node: degraded, "
           "routed around (503 saying why), healthy again after SIGCONT",
    "R-launch-kill": "kill -9 of the manager mid-launch (local, SLURM, Tapis)",
    "R-shared-state": "two Jupyter servers sharing one state directory",
}


def main(pytest_args: list[str]) -> int:
    scratch = tempfile.TemporaryDirectory(prefix="hpcserve-reliability-")
    out = Path(os.environ.get("HPCSERVE_RELIABILITY_OUT") or Path(scratch.name) / "figures.json")
    out.unlink(missing_ok=True)  # only this run's figures
    env = {**os.environ, "HPCSERVE_RELIABILITY_OUT": str(out)}
    start = time.monotonic()
    code = subprocess.call([sys.executable, "-m", "pytest", "tests/reliability", "-q",
                            *pytest_args], cwd=REPO, env=env)
    took = time.monotonic() - start
    try:
        figures = json.loads(out.read_text())
    except (OSError, ValueError):
        figures = {}
    print(f"\n== reliability figures (pytest exit {code}, {took:.0f} s)")
    for key in sorted(figures, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER)):
        print(f"{key}: {TITLES.get(key, '')}")
        for name, value in sorted(figures[key].items()):
            if name != "recorded_at":
                print(f"    {name:38} {value}")
    missing = [k for k in ORDER if k not in figures]
    if missing:
        print("not measured in this run: " + ", ".join(missing))
    RESULTS.mkdir(parents=True, exist_ok=True)
    scratch.cleanup()
    (RESULTS / "reliability.json").write_text(json.dumps(
        {**provenance(), "pytest_exit": code, "duration_s": round(took, 1), "figures": figures,
         "not_measured": missing}, indent=2, sort_keys=True) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
