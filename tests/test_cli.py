"""The `hpcserve` command, run as a real subprocess."""

from __future__ import annotations

import json

import pytest


def test_help_and_usage_errors(run_cli):
    assert run_cli("--help").returncode == 0
    r = run_cli()
    assert r.returncode == 2 and "usage:" in r.stderr
    r = run_cli("launch")
    assert r.returncode == 2 and "recipe" in r.stderr


def test_recipes_and_targets(run_cli):
    r = run_cli("recipes")
    assert r.returncode == 0 and "smollm2-135m" in r.stdout and "llama-cpp" in r.stdout
    r = run_cli("recipes", "smollm2-135m", "--json")
    assert json.loads(r.stdout)["backends"] == ["llama-cpp"]
    r = run_cli("targets", "--json")
    assert [t["name"] for t in json.loads(r.stdout)] == ["local"]


@pytest.mark.parametrize("args,words", [
    (["launch", "smollm2-13m"], ["unknown recipe 'smollm2-13m'", "did you mean 'smollm2-135m'"]),
    (["launch", "smollm2-135m", "--gpus", "-1"], ["invalid override gpus='-1'"]),
    (["launch", "smollm2-135m", "--time", "banana"], ["invalid override time='banana'"]),
    (["launch", "smollm2-135m", "--backend", "vllm"], ["does not support backend 'vllm'"]),
    (["launch", "smollm2-135m", "--set", "cpus"], ["--set expects KEY=VALUE"]),
    (["launch", "smollm2-135m", "--set", "colour=red"], ["unknown override 'colour'"]),
    (["launch", "smollm2-135m", "--on", "mars"], ["unknown target 'mars'", "targets.yaml"]),
    (["status", "nope"], ["no session 'nope'"]),
    (["stop", "nope"], ["no session 'nope'"]),
    # found by fuzzing (R5):
    # launch options given as --set reached the facade's launch() as keyword arguments: a
    # TypeError traceback ("got multiple values for keyword argument 'backend'"), or silently
    # taken for the facade's own argument (timeout, progress)
    (["launch", "smollm2-135m", "--set", "wait=1"], ["unknown override 'wait'", "use --wait"]),
    (["launch", "smollm2-135m", "--set", "on=local"], ["unknown override 'on'", "use --on"]),
    (["launch", "smollm2-135m", "--set", "name=x"], ["unknown override 'name'", "use --name"]),
    (["launch", "smollm2-135m", "--set", "timeout=5"], ["unknown override 'timeout'"]),
    (["launch", "smollm2-135m", "--set", "recipe=x"], ["unknown override 'recipe'"]),
    (["launch", "smollm2-135m", "--set", "backend=vllm"], ["does not support backend 'vllm'"]),
    (["launch", "smollm2-135m", "--backend", "llama-cpp", "--set", "backend=vllm"],
     ["disagree"]),
    # numbers that cannot mean anything: were accepted (a busy monitor loop, a wait that never
    # times out, the log from line 3 on)
    (["monitor", "--interval", "0"], ["--interval", "seconds > 0"]),
    (["monitor", "--interval", "nan"], ["--interval", "seconds > 0"]),
    (["launch", "smollm2-135m", "--wait", "--timeout", "-1"], ["--timeout", "seconds > 0"]),
    (["logs", "x", "--tail", "-3"], ["--tail", "integer >= 0"]),
])
def test_bad_input_exits_2_with_a_clear_message(run_cli, args, words):
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_broken_targets_file_points_at_the_line(run_cli, tmp_path):
    (tmp_path / "targets.yaml").write_text("targets:\n  gpu:\n    kind: slurmm\n")
    r = run_cli("targets")
    assert r.returncode == 2
    assert "targets.yaml:3" in r.stderr and "unknown kind 'slurmm'" in r.stderr


@pytest.mark.model
def test_cli_drives_the_whole_lifecycle(run_cli):
    r = run_cli("launch", "smollm2-135m", "--name", "cli-1", "--wait", "--timeout", "120")
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip()
    assert "cli-1: pending" in r.stderr and "cli-1: ready" in r.stderr
    st = json.loads(run_cli("status", "cli-1", "--json").stdout)
    assert st["id"] == sid and st["state"] == "ready" and st["endpoints"]
    assert "cli-1" in run_cli("status").stdout
    r = run_cli("prompt", sid, "What", "is", "2+2?", "--temperature", "0", "--max-tokens", "16")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r = run_cli("chat", "cli-1", "--max-tokens", "8", input="Hello\n\n")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    assert "chat/completions" in run_cli("logs", "cli-1", "--tail", "50").stdout
    assert run_cli("keepalive", "cli-1").returncode == 0
    r = run_cli("stop", "cli-1")
    assert r.returncode == 0 and "stopped" in r.stderr
    assert run_cli("stop", sid).returncode == 0  # again: a no-op
    r = run_cli("prompt", sid, "hi")
    assert r.returncode == 1 and "stopped, not ready" in r.stderr
    assert "cli-1" not in run_cli("status").stdout
    assert "stopped" in run_cli("status", "--all").stdout


@pytest.mark.model
def test_cli_launch_failure_shows_reason_and_log_tail(run_cli, tmp_path):
    r = run_cli("launch", "smollm2-135m", "--set", f"model={tmp_path}/nope.gguf", "--wait")
    assert r.returncode == 1
    assert "failed" in r.stderr and "nope.gguf" in r.stderr
    assert "Traceback (most recent call last)" not in r.stderr.split("engine log")[0]


# ---------------------------------------------------------------------- found by fuzzing (R5)


def test_chat_with_a_session_that_is_not_ready_says_so_before_reading(run_cli, tmp_path):
    (tmp_path / "targets.yaml").write_text(
        "targets:\n  local: {kind: local, python: /nonexistent/python}\n")
    r = run_cli("launch", "smollm2-135m", "--name", "gone")
    assert r.returncode == 1 and "was not found" in r.stderr, r.stderr  # a failed session
    r = run_cli("chat", "gone", input="hello\n\n")
    assert r.returncode == 1 and "gone is failed, not ready" in r.stderr, r.stderr
    assert "chatting with" not in r.stderr


def test_progress_writes_to_stderr_as_it_is_when_used():
    """The default stream was bound at import: redirect_stderr (and pytest) missed it."""
    import contextlib
    import io
    import types

    from hpcserve_jupyter.cli import Progress

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        Progress()(types.SimpleNamespace(state="pending", reason="", name="s-1"))
    assert "s-1: pending" in err.getvalue()


def test_status_output_ends_its_last_line(run_cli, tmp_path):
    """Issue 13: the next output was said to be glued to the status table. Each form of
    `status` ends with a newline and its table has a row per session, under the header."""
    (tmp_path / "targets.yaml").write_text(
        "targets:\n  local: {kind: local, python: /nonexistent/python}\n")
    for name in ("ended-1", "ended-2"):
        assert run_cli("launch", "smollm2-135m", "--name", name).returncode == 1
    r = run_cli("status", "--all")
    assert r.returncode == 0 and r.stdout.endswith("\n"), repr(r.stdout)
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["ID", "NAME"]
    assert sorted(line.split()[1] for line in lines[1:]) == ["ended-1", "ended-2"]
    for args in (["status", "ended-1"], ["status", "--json"], ["status", "--all", "--json"]):
        r = run_cli(*args)
        assert r.returncode == 0 and r.stdout.endswith("\n"), (args, repr(r.stdout))
    r = run_cli("status")
    assert r.stdout == "" and r.stderr.endswith("lists ended ones)\n")
