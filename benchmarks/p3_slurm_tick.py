"""P3: the SLURM target's monitor with 200 sessions on the test cluster. Goals: <= 2 scheduler
commands per tick, tick < 0.3 s.

Pending: 200 sleep jobs in the queue; the target's batched poll timed, against one
`squeue -j ID` per job (what a naive monitor does), timed for 20 of the jobs in the same run.

Running: 200 sessions launched through the real SessionManager (the real job script, written
and submitted over SSH), all running at once and each serving a tiny HTTP server as its engine
(a benchmark of the monitor, not of an engine). The real `SessionManager.tick()` is timed while
the engines start and once all are ready: scheduler commands, SFTP reads, health probes
(through the sessions' SSH tunnels) and SSH channels opened per tick, and once ready the
background health probes of ready sessions (readiness.py: every health_interval, 15 s by
default, so about 200 in the 20 s measured) that run between and beside the ticks.

The test node has 2 cores and its `debug` partition does not oversubscribe, so 200 jobs run at
once only in a partition that does: this benchmark creates one (`scontrol create`, as root,
OverSubscribe=FORCE) and deletes it afterwards. While those jobs run, jobs of the `debug`
partition wait (SLURM does not share a core between partitions).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster import cluster_env, slurm_config
from common import stats, write

from hpcserve_jupyter.manager import SessionManager
from hpcserve_jupyter.sessions import State
from hpcserve_jupyter.spec import HOST, PORT, PYTHON, ServeSpec
from hpcserve_jupyter.targets.slurm.target import SlurmTarget

JOBS = 200
TICKS = 10
PARTITION = "hpcserve-p3bench"
WORKDIR = "~/.hpcserve-bench-p3"
POLL_INTERVAL = 2.0  # the manager's default: ready sessions are probed once per interval
READY_TIMEOUT = 600.0
GOAL_COMMANDS, GOAL_TICK_S = 2, 0.3

# The engine of every running session: answers any GET with 200 over HTTP/1.1 keep-alive (as
# an engine's /health does), one thread per connection so a kept-alive probe blocks no other.
# SO_REUSEPORT: the job script picks a free port and then starts the engine on it, and among
# 200 jobs starting at once on one node two sometimes pick the same one; both then answer.
ENGINE = """
import socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Health(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.wfile.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
    def log_message(self, *args):
        pass
class Server(ThreadingHTTPServer):
    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()
Server((sys.argv[1], int(sys.argv[2])), Health).serve_forever()
"""
SPEC = ServeSpec(
    recipe="p3-health-only", backend="llama-cpp", category="inference", model="none",
    served_model_name="p3", argv=(PYTHON, "-c", ENGINE, HOST, PORT), env=(), secret_env=(),
    health_path="/health", api_flavour="openai", nodes=1, gpus=0, gpu_class=None, cpus=1,
    memory_mb=64, time_s=1800, replicas=1, gpus_per_replica=0, tensor_parallel=1,
    base_port=None, image=None, idle_timeout_s=None, max_lifetime_s=None)


# ---------------------------------------------------------------------- pending jobs


def pending(env: dict[str, str]) -> dict[str, Any]:
    target = SlurmTarget("bench", slurm_config(env))
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
        phases = Counter(str(st.phase) for st in statuses.values())
        naive = []
        for job in list(handles.values())[:20]:
            start = time.perf_counter()
            shell.run(["squeue", "--noheader", "-j", job["job_id"], "-o", "%T"])
            naive.append(time.perf_counter() - start)
    finally:
        shell.run(["scancel", "--name=p3bench"], check=False)
    d, n = stats(durations), stats(naive)
    naive_tick = n["median"] * JOBS
    result = {"jobs": len(ids), "ticks": TICKS, "phases": dict(phases),
              "scheduler_commands_per_tick": max(calls), "tick_s": d,
              "baseline": "one squeue per job over the same SSH connection",
              "baseline_tick_s_estimate": round(naive_tick, 3),
              "speedup_vs_baseline": round(naive_tick / d["median"], 1),
              "goal_met": max(calls) <= GOAL_COMMANDS and d["median"] < GOAL_TICK_S}
    print(f"pending: {len(ids)} jobs ({dict(phases)}); scheduler commands per tick: "
          f"{max(calls)} (goal <= {GOAL_COMMANDS})")
    print(f"pending: tick median {d['median'] * 1000:.0f} ms, p95 {d['p95'] * 1000:.0f} ms "
          f"(goal < {GOAL_TICK_S * 1000:.0f} ms)")
    print(f"pending: baseline one squeue per job: {n['median'] * 1000:.0f} ms each -> "
          f"{naive_tick:.1f} s per tick ({result['speedup_vs_baseline']}x slower)")
    return result


# ---------------------------------------------------------------------- running sessions


class Calls:
    """Counts (and times) calls of chosen methods of one object, by replacing them on the
    instance: what a tick costs in SSH traffic, without changing what it does."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self._lock = threading.Lock()

    def watch(self, obj: Any, *names: str, label: str = "") -> None:
        for name in names:
            setattr(obj, name, self._wrap(label + name, getattr(obj, name)))

    def _wrap(self, key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        if asyncio.iscoroutinefunction(fn):
            async def timed_async(*args: Any, **kw: Any) -> Any:
                start = time.perf_counter()
                try:
                    return await fn(*args, **kw)
                finally:
                    self._add(key, time.perf_counter() - start)
            return timed_async

        def timed(*args: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self._add(key, time.perf_counter() - start)
        return timed

    def _add(self, key: str, seconds: float) -> None:
        with self._lock:
            self.counts[key] += 1
            self.seconds[key] += seconds

    def take(self) -> tuple[dict[str, int], dict[str, float]]:
        """The counts and seconds since the last take."""
        with self._lock:
            out = dict(self.counts), dict(self.seconds)
            self.counts.clear()
            self.seconds.clear()
        return out


class HealthOnlyManager(SessionManager):
    """The real manager, whose every launch serves the tiny health-only engine."""

    def resolve(self, recipe: str, backend: str | None, overrides: Any) -> ServeSpec:
        return SPEC


def scontrol(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)


def oversubscribed_partition() -> None:
    if os.geteuid() != 0:
        raise SystemExit("P3 needs root: it adds a temporary oversubscribed partition to the "
                         "test cluster (scontrol create), so that 200 jobs run on its 2 cores")
    scontrol("delete", f"PartitionName={PARTITION}")  # left over from an interrupted run
    made = scontrol("create", f"PartitionName={PARTITION}", "Nodes=ALL", "State=UP",
                    f"OverSubscribe=FORCE:{JOBS}", "MaxTime=INFINITE", "Default=NO")
    if made.returncode:
        raise SystemExit(f"scontrol create partition failed: {made.stderr.strip()}")


def remove_partition(user: str) -> None:
    """Cancel the partition's jobs, then delete it once none is left in it."""
    subprocess.run(["scancel", f"--partition={PARTITION}", f"--user={user}"], check=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        left = subprocess.run(["squeue", "--noheader", f"--partition={PARTITION}",
                               "--states=PD,R,CG,S"], capture_output=True, text=True).stdout
        if not left.strip() and scontrol("delete", f"PartitionName={PARTITION}").returncode == 0:
            return
        time.sleep(1)
    print(f"WARNING: partition {PARTITION} could not be deleted; "
          f"run `scontrol delete PartitionName={PARTITION}` once its jobs are gone")


def ended(mgr: SessionManager) -> list[str]:
    """Why sessions ended before they were ready (a benchmark engine should never fail)."""
    return [f"{s.name}: {s.reason}: {s.log_tail[-200:]}" for s in mgr.sessions()
            if s.state.terminal]


def tick_figures(ticks: list[dict[str, Any]]) -> dict[str, Any]:
    def most(key: str) -> int:
        return max(t["counts"].get(key, 0) for t in ticks)

    return {"ticks": len(ticks), "tick_s": stats([t["tick_s"] for t in ticks]),
            "poll_s": stats([t["seconds"].get("target.poll", 0.0) for t in ticks]),
            "scheduler_commands_per_tick_max": max(t["scheduler"] for t in ticks),
            "ssh_commands_per_tick_max": most("ssh.run"),
            "sftp_reads_per_tick_max": most("ssh.read_file"),
            "sftp_stats_per_tick_max": most("ssh.stat"),
            "health_probes_per_tick_max": most("manager._healthy"),
            # ready sessions' health probes (readiness.py): background tasks every
            # health_interval, counted in the tick window they ran in
            "background_probes_per_tick_max": most("manager._probe"),
            "background_probes_per_tick_median": stats(
                [t["counts"].get("manager._probe", 0) for t in ticks])["median"],
            "tunnel_channels_opened_per_tick_max": most("ssh._open_forward_channel"),
            "tunnel_channels_opened_per_tick_median": stats(
                [t["counts"].get("ssh._open_forward_channel", 0) for t in ticks])["median"]}


async def running_ticks(env: dict[str, str], home: Path) -> dict[str, Any]:
    config = {**slurm_config(env), "kind": "slurm", "partition": PARTITION, "workdir": WORKDIR}
    mgr = HealthOnlyManager(home, target_configs={"p3": config}, poll_interval=POLL_INTERVAL)
    target = mgr.target("p3")
    calls = Calls()
    shell = target.shell()
    calls.watch(shell, "run", "read_file", "stat", "_open_forward_channel", label="ssh.")
    calls.watch(target, "poll", label="target.")
    calls.watch(mgr, "_healthy", label="manager.")
    calls.watch(mgr.ready_health, "probe", label="manager._")  # ready sessions' probes
    try:
        t0 = time.monotonic()
        sessions = await asyncio.gather(*(mgr.launch(SPEC.recipe, target="p3", name=f"p3-{i}")
                                          for i in range(JOBS)))
        launch_s = time.monotonic() - t0
        calls.take()

        async def tick() -> dict[str, Any]:
            target.scheduler_calls.clear()
            start = time.perf_counter()
            await mgr.tick()
            took = time.perf_counter() - start
            counts, seconds = calls.take()
            states = Counter(str(s.state) for s in mgr.sessions(live_only=False))
            return {"tick_s": took, "scheduler": sum(target.scheduler_calls.values()),
                    "counts": counts, "seconds": seconds, "states": dict(states)}

        # While the engines start: jobs running, endpoints not all published yet.
        startup: list[dict[str, Any]] = []
        waiting = {str(State.PENDING), str(State.STARTING)}
        while time.monotonic() - t0 < READY_TIMEOUT:
            startup.append(await tick())
            if not waiting & set(startup[-1]["states"]):
                break
            await asyncio.sleep(POLL_INTERVAL)
        ready_s = time.monotonic() - t0
        ready = startup[-1]["states"].get(str(State.READY), 0)
        if waiting & set(startup[-1]["states"]) or ready < JOBS * 0.9:
            raise SystemExit(f"P3: {ready} of {JOBS} sessions ready after {ready_s:.0f} s: "
                             f"{startup[-1]['states']}; {ended(mgr)}")
        # Steady state: every job running, every engine ready, one tick per poll interval.
        steady = []
        for _ in range(TICKS):
            await asyncio.sleep(POLL_INTERVAL)
            steady.append(await tick())
        return {"sessions": len(sessions), "launch_s": round(launch_s, 1),
                "launch_to_all_ready_s": round(ready_s, 1), "ended_while_starting": ended(mgr),
                "startup": tick_figures(startup), "ready": tick_figures(steady),
                "ready_states": steady[-1]["states"]}
    finally:
        for s in mgr.sessions():
            if s.handle and "ports" in s.handle:
                for port in s.handle["ports"]:
                    shell.close_tunnel(s.handle["node"], int(port))
        await mgr.close()


def running(env: dict[str, str]) -> dict[str, Any]:
    oversubscribed_partition()
    user = env["HPCSERVE_TEST_SSH_USER"]
    try:
        with tempfile.TemporaryDirectory(prefix="hpcserve-p3-") as tmp:
            result = asyncio.run(running_ticks(env, Path(tmp)))
    finally:
        remove_partition(user)
        target = SlurmTarget("bench", {**slurm_config(env), "workdir": WORKDIR})
        target.shell().run(["rm", "-rf", target.base_dir()], check=False)
    ready, startup = result["ready"], result["startup"]
    result["goal_met"] = (ready["scheduler_commands_per_tick_max"] <= GOAL_COMMANDS
                          and ready["tick_s"]["median"] < GOAL_TICK_S)
    print(f"running: {result['sessions']} sessions launched in {result['launch_s']} s, "
          f"{result['ready_states']} after {result['launch_to_all_ready_s']} s "
          f"({startup['ticks']} ticks)")
    for line in result["ended_while_starting"]:
        print("running: ended while starting:", line)
    for name, t in (("starting", startup), ("ready", ready)):
        print(f"running ({name}): tick median {t['tick_s']['median'] * 1000:.0f} ms, p95 "
              f"{t['tick_s']['p95'] * 1000:.0f} ms, of which the target's poll "
              f"{t['poll_s']['median'] * 1000:.0f} ms; per tick at most "
              f"{t['scheduler_commands_per_tick_max']} scheduler commands "
              f"({t['ssh_commands_per_tick_max']} SSH commands in all), "
              f"{t['sftp_reads_per_tick_max']} SFTP reads, {t['health_probes_per_tick_max']} "
              f"health probes, {t['tunnel_channels_opened_per_tick_max']} tunnel channels "
              f"opened; background probes of ready sessions per tick: median "
              f"{t['background_probes_per_tick_median']:.0f}, max "
              f"{t['background_probes_per_tick_max']}")
    rest = ready["tick_s"]["median"] - ready["poll_s"]["median"]
    if ready["health_probes_per_tick_max"]:
        print(f"running (ready): {rest * 1000:.0f} ms of the tick beyond the poll go to "
              f"{ready['health_probes_per_tick_max']} health probes through the tunnels, "
              f"{ready['tunnel_channels_opened_per_tick_median']:.0f} of them on a new SSH "
              "channel (median)")
    return result


def main() -> dict:
    env = cluster_env()
    result = {"jobs": JOBS, "goals": {"commands_per_tick": GOAL_COMMANDS, "tick_s": GOAL_TICK_S},
              "pending": pending(env), "running": running(env)}
    result["goal_met"] = result["pending"]["goal_met"] and result["running"]["goal_met"]
    print("wrote", write("p3_slurm_tick", result))
    return result


if __name__ == "__main__":
    main()
