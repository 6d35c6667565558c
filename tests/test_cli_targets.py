"""Every `hpcserve` command, run as a real subprocess, against each kind of target: local (the
real llama.cpp engine), SLURM (the real test cluster over sshd), Tapis Pods (the stand-in
behind real tapipy) and Tapis Jobs (the stand-in's Jobs API running jobs on the test
cluster). Whatever a command does, its stderr never holds a traceback: it succeeds, or it
fails with a one-line message and exit code 1 or 2 (GitHub issue 13, part 2).

One test per target kind runs the commands in sequence on the sessions it launches.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from hpcserve_jupyter.targets.local import SESSION_MARK
from job_inputs import chat_lines, write
from target_fixtures import (  # noqa: F401
    cluster,
    jobs_standin,
    pod_proxy,
    pods_config,
    slurm_config,
    standin,
    tapis_jobs_config,
)

RECIPE = "smollm2-135m"
TRACEBACK = "Traceback (most recent call last)"
LOG_HEADER = "--- last lines of the engine log ---"
EXE = str(Path(sys.executable).with_name("hpcserve"))

pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]


class Cli:
    """Runs `hpcserve` and checks what every command must do: the expected exit code, no
    traceback, a message on stderr when it fails, and output that ends its last line."""

    def __init__(self, run_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
        self.run_cli = run_cli
        self.ran: list[str] = []

    def __call__(self, *args: str, rc: int = 0, input: str | None = None,
                 timeout: float = 240) -> subprocess.CompletedProcess[str]:
        r = self.run_cli(*args, input=input, timeout=timeout)
        self.ran.append(" ".join(args[:1]))
        what = f"hpcserve {' '.join(args)} -> {r.returncode}\n{r.stderr}"
        # An engine's own log (`logs`, a failed session's log tail) may hold its traceback.
        assert TRACEBACK not in r.stderr.split(LOG_HEADER)[0], what
        if "--json" in args and r.stdout:
            json.loads(r.stdout)  # data (a session's log tail in it may quote a traceback)
        elif args[0] != "logs":
            assert TRACEBACK not in r.stdout.split(LOG_HEADER)[0], what
        assert r.returncode == rc, what
        if rc:  # said in a line of its own
            assert any(line.startswith("hpcserve: ") for line in r.stderr.splitlines()), what
        assert not r.stdout or r.stdout.endswith("\n"), f"{what}\nstdout: {r.stdout[-200:]!r}"
        return r

    def popen(self, *args: str) -> subprocess.Popen[str]:
        self.ran.append(args[0])
        return subprocess.Popen([EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ))


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert TRACEBACK not in err, err
    return proc.returncode, out, err


def table(stdout: str) -> dict[str, dict[str, str]]:
    """`hpcserve status` as {name: row}; the header names the columns."""
    lines = stdout.splitlines()
    header = lines[0].split()
    assert header[:2] == ["ID", "NAME"], stdout
    return {row.split()[1]: dict(zip(header, row.split(), strict=False)) for row in lines[1:]}


def wait_state(cli: Cli, name: str, states: set[str], timeout: float = 180) -> dict[str, Any]:
    """`status NAME --json` until the session is in one of `states` (every call is a CLI run,
    whose embedded manager ticks once at start)."""
    deadline = time.monotonic() + timeout
    while True:
        info = json.loads(cli("status", name, "--json").stdout)
        if info["state"] in states or time.monotonic() > deadline:
            assert info["state"] in states, info
            return info
        time.sleep(0.5)


def every_command(cli: Cli, target: str, kind: str, *launch_args: str) -> list[str]:
    """The whole command set on `target`, in the order a user meets it; `launch_args` go to
    every launch. Returns the ids of the sessions it launched (all ended by then)."""
    # catalog
    assert target in table_of_targets(cli("targets").stdout)
    assert {"name": target, "kind": kind}.items() <= next(
        t for t in json.loads(cli("targets", "--json").stdout) if t["name"] == target).items()
    assert RECIPE in cli("recipes").stdout
    assert cli("recipes", RECIPE).stdout.startswith(f"name: {RECIPE}\n")
    assert RECIPE in [r["name"] for r in json.loads(cli("recipes", "--json").stdout)]

    # launch without --wait (issue 13: this one printed a traceback as the CLI exited), then
    # with --wait; the second one's monitor moves the first along too
    r = cli("launch", RECIPE, "--on", target, "--name", "plain", *launch_args)
    plain = r.stdout.strip()
    assert f"launched plain (id {plain}) on {target}" in r.stderr
    r = cli("launch", RECIPE, "--on", target, "--name", "waited", "--wait", "--timeout", "240",
            "--json", *launch_args, timeout=300)
    waited = json.loads(r.stdout)
    assert waited["state"] == "ready" and waited["target"] == target, r.stderr
    assert "waited: ready" in r.stderr
    wait_state(cli, "plain", {"ready"})

    # status, all its forms
    r = cli("status")
    rows = table(r.stdout)
    assert set(rows) == {"plain", "waited"}, r.stdout
    assert {row["STATE"] for row in rows.values()} == {"ready"}
    assert rows["plain"]["ID"] == plain and rows["plain"]["TARGET"] == target
    r = cli("status", "waited")
    fields = dict(line.split(None, 1) for line in r.stdout.splitlines())
    assert fields["id"] == waited["id"] and fields["state"] == "ready", r.stdout
    assert fields["target"] == target
    assert {s["name"] for s in json.loads(cli("status", "--json").stdout)} == {"plain", "waited"}
    # time left: the nearer of the target's limit and the max lifetime (autostop), which the
    # recipe's time limit sets; every view carries it
    info = json.loads(cli("status", "waited", "--json").stdout)
    assert info["time_limit_s"] and 0 < info["time_left_s"] <= info["time_limit_s"]
    assert info["ends_at"].endswith("+00:00")
    assert rows["waited"]["TIME_LEFT"] not in ("", "-"), r.stdout
    assert "time left" in cli("status", "waited").stdout

    # relaunch: the same recipe, target and overrides under the next name; extend where the
    # target allows (the max lifetime at least; SLURM's own refusal is passed on)
    r = cli("relaunch", "plain", "--json")
    again = json.loads(r.stdout)
    assert (again["name"], again["recipe"], again["target"]) == ("plain-2", RECIPE, target)
    cli("stop", "plain-2")
    if kind == "local":
        r = cli("extend", "waited", "--time", "10m", "--json")
        grown = json.loads(r.stdout)["session"]
        assert grown["max_lifetime_s"] == info["max_lifetime_s"] + 600
    elif kind == "slurm":
        r = cli("extend", "waited", "--time", "10m", rc=2)
        assert "SLURM refused to extend job" in r.stderr, r.stderr
    else:  # Tapis: the target's limit is fixed once submitted or started; the max lifetime
        # grows within the bound, and the answer says the target's limit stays
        r = cli("extend", "waited", "--time", "10m", "--json")
        said = json.loads(r.stdout)
        assert said["session"]["max_lifetime_s"] == info["max_lifetime_s"] + 600
        assert "the target's own limit stays" in said["message"], said
        assert "still ends in" in said["message"], said  # its limit comes first now
    cli("extend", "waited", "--time", "soon", rc=2)

    # prompting: the answer's words are the model's; that one came back is ours to check
    r = cli("prompt", waited["id"], "Say", "hi.", "--max-tokens", "8", "--temperature", "0")
    assert r.stdout.strip(), r.stderr
    r = cli("prompt", "waited", "Hello", "--system", "Be brief.", "--max-tokens", "4")
    assert r.stdout.strip()
    r = cli("chat", "waited", "--max-tokens", "8", input="Hello\n\n")
    assert "chatting with waited" in r.stderr and r.stdout.strip("> \n")
    assert "chat/completions" in cli("logs", "waited", "--tail", "200").stdout
    cli("logs", "waited", "--tail", "0")
    r = cli("keepalive", "waited")
    assert "idle timer reset" in r.stderr

    # `logs -f` follows until the session ends: here, a stop from another process
    follow = cli.popen("logs", "waited", "--follow")
    first = follow.stdout.readline()  # type: ignore[union-attr]  # it follows now
    r = cli("stop", "waited")
    assert "waited: stopped" in r.stderr
    code, out, err = finish(follow)
    assert code == 0 and "chat/completions" in first + out, err
    cli("stop", "waited")  # again: a no-op

    # what a stopped session refuses, with a message
    r = cli("prompt", "waited", "hi", rc=1)
    assert "stopped, not ready" in r.stderr
    r = cli("chat", "waited", rc=1, input="hello\n\n")
    assert "stopped, not ready" in r.stderr
    r = cli("keepalive", "waited", rc=1)
    assert "nothing to keep alive" in r.stderr
    cli("logs", "waited")

    # the foreground monitor, ended by Ctrl-C, while another process reads the state
    monitor = cli.popen("monitor", "--interval", "1")
    assert "monitoring" in monitor.stderr.readline()  # type: ignore[union-attr]
    assert set(table(cli("status").stdout)) == {"plain"}
    monitor.send_signal(signal.SIGINT)
    code, _, err = finish(monitor)
    assert code == 130 and "hpcserve: interrupted" in err, err

    r = cli("stop", plain)
    assert "plain: stopped" in r.stderr
    r = cli("status")
    assert not r.stdout and "no live sessions" in r.stderr
    rows = table(cli("status", "--all").stdout)
    assert {rows["plain"]["STATE"], rows["waited"]["STATE"]} == {"stopped"}

    # failures, each with a message
    r = cli("launch", RECIPE, "--on", target, "--name", "broken", "--wait", "--timeout", "240",
            "--set", "model=/nonexistent/model.gguf", *launch_args, rc=1, timeout=300)
    assert "hpcserve: session broken failed" in r.stderr, r.stderr
    assert "/nonexistent/model.gguf" in r.stderr  # the engine's log tail says why
    r = cli("status", "broken")
    assert "state      failed" in r.stdout and LOG_HEADER in r.stdout
    cli("stop", "broken")  # an ended session: a no-op
    cli("status", "nope", rc=2)
    cli("logs", "nope", rc=2)
    cli("prompt", "nope", "hi", rc=2)
    cli("launch", RECIPE, "--on", target, "--set", "colour=red", rc=2)
    cli("launch", RECIPE, "--on", f"{target}x", rc=2)

    # one-off jobs: submit and wait (exit 0 once done), status, results, logs, cancel, refusals
    inp = write(Path(os.environ["HPCSERVE_HOME"]).parent / "job-input.jsonl",
                chat_lines(3, max_tokens=4))
    r = cli("job", "submit", RECIPE, "--input", str(inp), "--on", target, "--name", "jobbed",
            "--wait", "--timeout", "300", "--json", *launch_args, timeout=360)
    job = json.loads(r.stdout)
    assert job["state"] == "done" and (job["done"], job["failed"]) == (3, 0), r.stderr
    assert "jobbed" in cli("job", "status", "--all").stdout
    assert json.loads(cli("job", "status", "jobbed", "--json").stdout)["target"] == target
    out = cli("job", "results", "jobbed").stdout
    assert sorted(json.loads(x)["custom_id"] for x in out.splitlines()) == ["q0", "q1", "q2"]
    assert "[hpcserve-job] done" in cli("job", "logs", "jobbed", "--tail", "0").stdout
    assert "jobbed: done" in cli("job", "cancel", "jobbed").stderr  # ended: a no-op
    cli("job", "status", "nope", rc=2)
    cli("job", "submit", RECIPE, "--input", f"{inp}.missing", "--on", target, rc=2)

    # the Tapis app of a tapis-jobs target (any other kind: refused with a message)
    if kind == "tapis-jobs":
        assert json.loads(cli("tapis", "app", "--on", target, "--dry-run").stdout)["app"]
    else:
        assert "not tapis-jobs" in cli("tapis", "app", "--on", target, rc=2).stderr

    # gateway keys (the state directory's, whichever target); Jupyter AI needs a Jupyter
    # server's gateway, which this embedded CLI has not: refused with what to do
    key = cli("keys", "create", "--label", f"cli-{kind}", "--session", "plain").stdout.strip()
    assert key.startswith("hsk_")
    assert f"cli-{kind}" in cli("keys", "list").stdout and key not in cli("keys", "list").stdout
    assert "revoked" in cli("keys", "revoke", f"cli-{kind}").stderr
    assert "HPCSERVE_SERVER_URL" in cli("ai", "plain", rc=2).stderr

    # model weights: this recipe's model ships in a Python package (nothing to pull); the
    # cache is listed on local and SLURM (on its login node); a Tapis Pods target without a
    # shared volume has nothing to fill ahead; Tapis Jobs says it cannot yet
    assert "nothing to pull" in cli("pull", RECIPE, "--on", target, rc=2).stderr
    if kind in ("local", "slurm"):
        cli("models", "--on", target)
    elif kind == "tapis-pods":
        assert "volume of its own" in cli("models", "--on", target, rc=2).stderr
    else:
        assert "not yet supported" in cli("models", "--on", target, rc=2).stderr

    # none left behind
    assert not json.loads(cli("status", "--json").stdout)
    ended = json.loads(cli("status", "--all", "--json").stdout)
    assert sorted(s["name"] for s in ended) == ["broken", "plain", "plain-2", "waited"]
    commands = {"recipes", "targets", "launch", "status", "logs", "prompt", "chat", "stop",
                "keepalive", "monitor", "job", "tapis", "keys", "ai", "pull", "models",
                "relaunch", "extend"}
    from hpcserve_jupyter.cli import COMMANDS

    assert set(COMMANDS) == commands  # a new command must be added here
    assert set(cli.ran) == commands
    return [s["id"] for s in ended]


@pytest.fixture(autouse=True)
def nothing_left_running(run_cli):
    """Whatever the test's outcome, stop the sessions it left live (a failed assertion in the
    middle of the sequence must not leave engines, jobs or pods behind)."""
    yield
    listed = run_cli("status", "--json", timeout=120)
    with contextlib.suppress(ValueError):
        for session in json.loads(listed.stdout or "[]"):
            run_cli("stop", session["id"], timeout=120)


def table_of_targets(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "GPUS"], stdout
    return [line.split()[0] for line in lines[1:]]


def write_targets(name: str, config: dict[str, Any]) -> None:
    Path(os.environ["HPCSERVE_TARGETS"]).write_text(yaml.safe_dump({"targets": {name: config}}))


def test_every_command_on_local(run_cli):
    ids = every_command(Cli(run_cli), "local", "local")
    marked = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(SESSION_MARK) in ids and proc.status() != psutil.STATUS_ZOMBIE:
                marked.append(proc.pid)
    assert not marked  # no engine process left


def test_every_command_on_slurm(run_cli, slurm_config):  # noqa: F811
    write_targets("cluster", slurm_config)
    # the test node has 2 CPUs: one each, so that the two sessions run at once
    ids = every_command(Cli(run_cli), "cluster", "slurm", "--set", "cpus=1")
    out = subprocess.run(["squeue", "--noheader", "-o", "%j"], capture_output=True, text=True,
                         check=True).stdout
    assert not [job for job in out.split() if job.endswith(tuple(ids))]  # no job left


def test_every_command_on_tapis_pods(run_cli, pods_config, standin):  # noqa: F811
    write_targets("pods", pods_config)
    every_command(Cli(run_cli), "pods", "tapis-pods")
    assert not [pod for pod in standin.pods if standin.local_url(pod)]  # no pod runs


def test_every_command_on_tapis_jobs(run_cli, tapis_jobs_config, jobs_standin):  # noqa: F811
    write_targets("hpc", tapis_jobs_config)
    # one CPU each on the 2-CPU test node, so that two sessions run at once
    ids = every_command(Cli(run_cli), "hpc", "tapis-jobs", "--set", "cpus=1")
    live = [j.uuid for j in jobs_standin.jobs.jobs.values()
            if j.status not in ("FINISHED", "FAILED", "CANCELLED")]
    assert live == [] and len(ids) == 4  # no Tapis job left running
