"""P3: 200 sessions' jobs in the queue (sleep jobs): scheduler commands per monitor tick and
tick duration of the SLURM target's batched poll. Baseline: one `squeue -j ID` per job (what a
naive monitor does), timed for 20 of the jobs in the same run. Goals: <= 2 commands, < 0.3 s."""

from __future__ import annotations

import asyncio
import time

from cluster import cluster_env, slurm_config
from common import stats, write

from hpcserve_jupyter.targets.slurm.target import SlurmTarget

JOBS = 200
TICKS = 10


def main() -> dict:
    target = SlurmTarget("bench", slurm_config(cluster_env()))
    shell = target.shell()
    base = target.base_dir() + "/bench-p3"
    shell.run(["mkdir", "-p", base])
    submit = "; ".join([f"sbatch --parsable --job-name=p3bench --output=/dev/null --chdir={base} "
                        "--time=10 --wrap 'sleep 600'"] * JOBS)
    ids = shell.run(["bash", "-c", submit], timeout=300).stdout.split()
    try:
        handles = {f"s{i}": {"job_id": j.split(";")[0], "workdir": f"{base}/{j}"}
                   for i, j in enumerate(ids)}
        time.sleep(3)  # let the scheduler start the jobs that fit on the node
        durations, calls = [], []
        for _ in range(TICKS):
            target.scheduler_calls.clear()
            start = time.perf_counter()
            statuses = asyncio.run(target.poll(handles))
            durations.append(time.perf_counter() - start)
            calls.append(sum(target.scheduler_calls.values()))
        phases = {}
        for st in statuses.values():
            phases[str(st.phase)] = phases.get(str(st.phase), 0) + 1
        naive = []
        for job in list(handles.values())[:20]:
            start = time.perf_counter()
            shell.run(["squeue", "--noheader", "-j", job["job_id"], "-o", "%T"])
            naive.append(time.perf_counter() - start)
    finally:
        shell.run(["scancel", "--name=p3bench"], check=False)
    d, n = stats(durations), stats(naive)
    naive_tick = n["median"] * JOBS
    result = {"jobs": len(ids), "ticks": TICKS, "phases": phases,
              "scheduler_commands_per_tick": max(calls), "tick_s": d,
              "baseline": "one squeue per job over the same SSH connection",
              "baseline_tick_s_estimate": round(naive_tick, 3),
              "speedup_vs_baseline": round(naive_tick / d["median"], 1),
              "goals": {"commands_per_tick": 2, "tick_s": 0.3},
              "goal_met": max(calls) <= 2 and d["median"] < 0.3}
    print(f"{len(ids)} jobs ({phases}); scheduler commands per tick: {max(calls)} (goal <= 2)")
    print(f"tick duration: median {d['median'] * 1000:.0f} ms, p95 {d['p95'] * 1000:.0f} ms "
          f"(goal < 300 ms)")
    print(f"baseline one squeue per job: {n['median'] * 1000:.0f} ms each -> "
          f"{naive_tick:.1f} s per tick ({result['speedup_vs_baseline']}x slower)")
    print("wrote", write("p3_slurm_tick", result))
    return result


if __name__ == "__main__":
    main()
