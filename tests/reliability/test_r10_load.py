"""R10: load on a real `jupyter server`. 200 sessions in its store and its monitor: one local
llama.cpp session and 199 on the SLURM test cluster (one job runs, the others wait for the
node's 2 cores: a real backlog, polled with one squeue per tick). Then 50 concurrent streamed
prompts through the proxy (0 errors), the list API timed while the monitor ticks over all
200, alone and during the streams (recorded with the README's 100 ms goal, not asserted: a
test asserts what the code controls, and a CI run on a machine slowed threefold missed it
while nothing had changed; `make reliability` prints the figure), and the
SSE event stream read from before the first launch to after the last stop: every session's
launch and stop seen, no resync (the manager drops a subscriber that falls 1000 events
behind), delivery lag measured. Afterwards nothing of the 200 runs or waits at the targets."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from conftest import (
    REPO,
    TOKEN,
    KillableServer,
    free_port,
    marked_processes,
    record,
    slurm_jobs,
    until,
    wait_ready,
)
from hpcserve_jupyter.targets.slurm.script import job_name

sys.path.insert(0, str(REPO / "benchmarks"))
from common import concurrent_prompts, stats

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]
SLURM_SESSIONS = 199
STREAMS = 50
LIST_CALLS = 100
LIST_API_GOAL_S = 0.1  # p95 of the session list with 200 sessions (README: "well under 100 ms")


class EventReader(threading.Thread):
    """Reads /hpcserve/api/events from the start; keeps (receive time, event) pairs."""

    def __init__(self, server: KillableServer) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=server.url, trust_env=False, timeout=None,
                                 headers={"Authorization": f"token {TOKEN}"})
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.connected = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.http.stream("GET", "hpcserve/api/events") as r:
                self.connected.set()
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append((time.time(), json.loads(line[6:])))
                    if self.done.is_set():
                        return
        except BaseException as exc:
            self.error = exc
        finally:
            self.connected.set()

    def final_states(self) -> dict[str, str]:
        last: dict[str, str] = {}
        for _, event in list(self.events):
            for s in event.get("sessions") or [event.get("session")]:
                if s:
                    last[s["id"]] = s["state"]
        return last


def timed_lists(http: httpx.Client, n: int) -> tuple[list[float], int]:
    took, sizes = [], 0
    for _ in range(n):
        t = time.perf_counter()
        r = http.get("hpcserve/api/sessions")
        took.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
        sizes = len(r.json()["sessions"])
    return took, sizes


def test_r10_200_sessions_50_streams(tmp_path, isolated_home, slurm_config, cluster):
    (tmp_path / "targets.yaml").write_text(json.dumps({"targets": {"cluster": slurm_config}}))
    server = KillableServer(tmp_path, free_port())
    reader = EventReader(server)
    reader.start()
    assert reader.connected.wait(30) and reader.error is None, reader.error
    ids: list[str] = []
    names: dict[str, str] = {}
    try:
        local = server.http.post("hpcserve/api/sessions",
                                 json={"recipe": "smollm2-135m", "target": "local"})
        assert local.status_code == 201, local.text
        local_id = local.json()["id"]
        ids.append(local_id)

        def launch(i: int) -> dict[str, Any]:
            r = server.http.post("hpcserve/api/sessions", json={
                "recipe": "smollm2-135m", "target": "cluster", "name": f"load-{i}"})
            assert r.status_code == 201, r.text
            return r.json()

        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            launched = list(pool.map(launch, range(SLURM_SESSIONS)))
        launch_s = time.monotonic() - t0
        ids += [s["id"] for s in launched]
        names = {s["id"]: job_name(s["name"], s["id"]) for s in launched}
        wait_ready(server, local_id, timeout=240)

        # Every job is at the scheduler and every session is monitored (none failed).
        def all_queued() -> bool:
            return set(names.values()) <= set(slurm_jobs(cluster.user))
        assert until(all_queued, 120, 1.0), len(set(names.values())
                                                 & set(slurm_jobs(cluster.user)))
        live = {s["id"]: s["state"] for s in server.http.get(
            "hpcserve/api/sessions", params={"live": "true"}).json()["sessions"]}
        assert set(ids) <= set(live), set(ids) - set(live)

        idle_lists, listed = timed_lists(server.http, LIST_CALLS)
        assert listed >= len(ids)
        burst: dict[str, Any] = {}
        streamer = threading.Thread(target=lambda: burst.update(asyncio.run(concurrent_prompts(
            f"{server.url}hpcserve/proxy/{local_id}/", TOKEN, STREAMS))))
        streamer.start()
        busy_lists, _ = timed_lists(server.http, LIST_CALLS // 2)
        streamer.join(600)
        assert burst.get("errors") == 0, burst
        assert burst["events"] >= STREAMS  # every stream carried tokens

        t1 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            stopped = list(pool.map(
                lambda sid: server.http.delete(f"hpcserve/api/sessions/{sid}"), ids))
        stop_s = time.monotonic() - t1
        assert all(r.status_code == 200 for r in stopped), [r.text for r in stopped
                                                            if r.status_code != 200][:3]
        assert all(r.json()["state"] == "stopped" for r in stopped)

        # The stream saw every session end, without falling behind.
        seen = until(lambda: all(reader.final_states().get(sid) == "stopped" for sid in ids),
                     60, 0.5)
        reader.done.set()
        finals = reader.final_states()
        assert seen, {sid: finals.get(sid) for sid in ids if finals.get(sid) != "stopped"}
        assert reader.error is None, reader.error
        kinds = [e.get("type") for _, e in reader.events]
        assert "resync" not in kinds
        lags = [got - e["ts"] for got, e in reader.events if e.get("type") != "snapshot"]

        # The targets' truth: nothing of the 200 runs or waits.
        assert until(lambda: not set(names.values()) & set(slurm_jobs(cluster.user)), 60)
        assert until(lambda: not marked_processes(isolated_home), 15)
        idle, busy = stats(idle_lists), stats(busy_lists)
        record("R10", sessions=len(ids), slurm_sessions=SLURM_SESSIONS,
               launch_199_over_rest_s=round(launch_s, 1), stop_200_over_rest_s=round(stop_s, 1),
               concurrent_streams=STREAMS, stream_errors=burst["errors"],
               stream_wall_s=burst["wall_s"],
               list_api_p50_ms=round(idle["p50"] * 1000, 1),
               list_api_p95_ms=round(idle["p95"] * 1000, 1),
               list_api_p95_during_streams_ms=round(busy["p95"] * 1000, 1),
               list_api_goal_p95_ms=LIST_API_GOAL_S * 1000,
               list_api_goal_met=idle["p95"] < LIST_API_GOAL_S,
               events_received=len(lags), events_resync=kinds.count("resync"),
               event_lag_p95_ms=round(stats(lags)["p95"] * 1000, 1),
               event_lag_max_ms=round(max(lags) * 1000, 1))
    finally:
        reader.done.set()
        if server.proc.poll() is None:
            for s in server.http.get("hpcserve/api/sessions").json()["sessions"]:
                if s["state"] in ("pending", "starting", "ready"):
                    server.http.delete(f"hpcserve/api/sessions/{s['id']}")
        server.stop()
        reader.http.close()
        left = set(names.values()) & set(slurm_jobs(cluster.user))
        if left:  # never leave the shared test cluster busy
            import subprocess

            subprocess.run(["scancel", "-u", cluster.user, "-n", ",".join(sorted(left))],
                           check=False)
