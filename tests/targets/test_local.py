"""The local target with real processes (small Python programs standing in as engines)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from hpcserve_jupyter.errors import BadInput, LaunchError
from hpcserve_jupyter.spec import HOST, PORT, PYTHON, ServeSpec
from hpcserve_jupyter.targets.base import LaunchRequest, Phase
from hpcserve_jupyter.targets.local import LocalTarget, same_process


def spec(argv: list[str], **kw) -> ServeSpec:
    base = dict(recipe="t", backend="test", category="inference", model=None,
                served_model_name="t", argv=tuple(argv), env=(("FROM_SPEC", "1"),),
                secret_env=(("THE_KEY", "api_key"),), health_path="/", api_flavour="openai",
                nodes=1, gpus=0, gpu_class=None, cpus=1, memory_mb=100, time_s=60, replicas=1,
                gpus_per_replica=0, tensor_parallel=1, base_port=None, image=None,
                idle_timeout_s=None, max_lifetime_s=None)
    base.update(kw)
    return ServeSpec(**base)


def request(tmp_path: Path, s: ServeSpec, sid: str = "sess0001", siblings=()) -> LaunchRequest:
    return LaunchRequest(session_id=sid, name="n", spec=s, workdir=tmp_path / sid,
                         secrets={"api_key": "hps-secret-value"}, siblings=tuple(siblings))


def run(coro):
    return asyncio.run(coro)


HTTP = [PYTHON, "-m", "http.server", PORT, "--bind", HOST]
PRINT_ENV = [PYTHON, "-c", "import os, time; e = os.environ; "
             "print('CVD=' + e.get('CUDA_VISIBLE_DEVICES', 'unset'), 'SPEC=' + e['FROM_SPEC'], "
             "'KEYLEN=%d' % len(e['THE_KEY']), flush=True); time.sleep(60)"]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def wait_log(target, handle, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log, _ = run(target.read_logs(handle))
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in log: {log!r}")


def test_launch_poll_stop_real_process(tmp_path):
    t = LocalTarget("local", {})
    h = run(t.launch(request(tmp_path, spec(HTTP))))
    port = h["replicas"][0]["port"]
    wait_port(port)
    st = run(t.poll({"a": h}))["a"]
    assert st.phase == Phase.RUNNING and st.endpoints == [f"http://127.0.0.1:{port}"]
    run(t.stop(h))
    st = run(t.poll({"a": h}))["a"]
    assert st.phase == Phase.EXITED
    assert not same_process(h["replicas"][0]["pid"], h["replicas"][0]["create_time"])


def test_env_secret_and_no_gpu_pinning(tmp_path):
    t = LocalTarget("local", {"env": {"FROM_TARGET": "x"}})
    h = run(t.launch(request(tmp_path, spec(PRINT_ENV))))
    log = wait_log(t, h, "KEYLEN=")
    assert "CVD=unset" in log and "SPEC=1" in log and "KEYLEN=16" in log
    assert "hps-secret-value" not in " ".join(psutil.Process(h["replicas"][0]["pid"]).cmdline())
    run(t.stop(h))


def test_gpu_pinning_and_classes_with_declared_inventory(tmp_path):
    t = LocalTarget("local", {"gpus": [0, 1, 2], "gpu_classes": {"small": [0], "large": [1, 2]}})
    two = spec(PRINT_ENV, gpus=2, gpus_per_replica=2, gpu_class="large")
    h1 = run(t.launch(request(tmp_path, two, "sess0001")))
    assert "CVD=1,2" in wait_log(t, h1, "CVD=")
    # The large class is now busy: a second launch is refused at launch time, clearly.
    with pytest.raises(LaunchError, match=r"(?s)needs 2 GPU\(s\) of class 'large'.*busy"):
        run(t.launch(request(tmp_path, two, "sess0002", siblings=[h1])))
    one = spec(PRINT_ENV, gpus=1, gpus_per_replica=1)
    h2 = run(t.launch(request(tmp_path, one, "sess0003", siblings=[h1])))
    assert "CVD=0" in wait_log(t, h2, "CVD=")
    with pytest.raises(LaunchError, match="no GPU class 'huge'"):
        run(t.launch(request(tmp_path, spec(PRINT_ENV, gpus=1, gpu_class="huge"), "s4")))
    run(t.stop(h1))
    run(t.stop(h2))


def test_replicas_get_their_own_gpus_and_ports(tmp_path):
    t = LocalTarget("local", {"gpus": ["0", "1", "2", "3"]})
    s = spec(PRINT_ENV, gpus=4, gpus_per_replica=2, replicas=2)
    h = run(t.launch(request(tmp_path, s)))
    reps = h["replicas"]
    assert [r["gpus"] for r in reps] == [["0", "1"], ["2", "3"]]
    assert reps[0]["port"] != reps[1]["port"]
    second = {"replicas": [reps[1]]}  # read_logs shows the first replica's log
    assert "CVD=2,3" in wait_log(t, second, "CVD=")
    run(t.stop(h))


def test_gpu_launch_without_gpus_fails_at_launch(tmp_path):
    t = LocalTarget("local", {"gpus": []})
    with pytest.raises(LaunchError, match=r"(?s)needs 1 GPU\(s\) but target 'local' has none"):
        run(t.launch(request(tmp_path, spec(PRINT_ENV, gpus=1, gpus_per_replica=1))))
    assert not (tmp_path / "sess0001" / "engine.log").exists()


def test_port_in_use_is_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(LaunchError, match=f"port {port} on 127.0.0.1 is already in use"):
            run(LocalTarget("local", {}).launch(request(tmp_path, spec(HTTP, base_port=port))))


def test_missing_engine_program_is_a_clear_launch_error(tmp_path):
    with pytest.raises(LaunchError, match="'no-such-engine-xyz' was not found"):
        run(LocalTarget("local", {}).launch(request(tmp_path, spec(["no-such-engine-xyz"]))))


def test_multi_node_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="one node"):
        run(LocalTarget("local", {}).launch(request(tmp_path, spec(HTTP, nodes=2))))


def test_exit_code_is_recorded_even_for_a_new_target_instance(tmp_path):
    crash = [PYTHON, "-c", "import sys; print('boom: bad model file', flush=True); sys.exit(3)"]
    h = run(LocalTarget("local", {}).launch(request(tmp_path, spec(crash))))
    time.sleep(1.0)
    st = run(LocalTarget("local", {}).poll({"a": h}))["a"]  # not the process's parent
    assert st.phase == Phase.EXITED and st.exit_code == 3
    assert "exited with code 3" in st.reason and "boom: bad model file" in st.log_tail


def test_reattach_from_another_instance_and_pid_reuse_guard(tmp_path):
    h = run(LocalTarget("local", {}).launch(request(tmp_path, spec(HTTP))))
    wait_port(h["replicas"][0]["port"])
    fresh = LocalTarget("local", {})
    assert run(fresh.poll({"a": h}))["a"].phase == Phase.RUNNING
    # A handle whose pid is alive but whose start time differs is a reused pid: never touched.
    me = psutil.Process(os.getpid())
    forged = {"session_id": "x", "replicas": [{**h["replicas"][0], "pid": me.pid,
                                               "create_time": me.create_time() - 1000}]}
    assert run(fresh.poll({"f": forged}))["f"].phase == Phase.EXITED
    run(fresh.stop(forged))  # would kill this test process if it signalled a reused pid
    run(fresh.stop(h))
    assert run(fresh.poll({"a": h}))["a"].phase == Phase.EXITED


def test_stop_kills_a_stubborn_engine_and_its_children(tmp_path):
    stubborn = [PYTHON, "-c", (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal,time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(300)\n")]
    t = LocalTarget("local", {"stop_grace": 1})
    h = run(t.launch(request(tmp_path, spec(stubborn))))
    log = wait_log(t, h, "child ")
    child_pid = int(log.split("child ")[1].split()[0])
    started = time.monotonic()
    run(t.stop(h))
    assert time.monotonic() - started < 5
    time.sleep(0.2)
    assert not psutil.pid_exists(child_pid) or \
        psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE


def test_runner_forwards_sigterm_and_records_signal(tmp_path):
    t = LocalTarget("local", {})
    h = run(t.launch(request(tmp_path, spec([PYTHON, "-c", "import time; time.sleep(60)"]))))
    time.sleep(0.5)
    os.kill(h["replicas"][0]["pid"], signal.SIGTERM)  # only the runner, not the group
    time.sleep(1.0)
    st = run(t.poll({"a": h}))["a"]
    assert st.phase == Phase.EXITED and st.exit_code == -signal.SIGTERM
    assert "SIGTERM" in st.reason


def test_bad_target_config_names_the_field():
    from hpcserve_jupyter.errors import RecipeError

    with pytest.raises(RecipeError, match="stop_grace"):
        LocalTarget("local", {"stop_grace": -1, "_source": ("t.yaml", 3)})
    with pytest.raises(RecipeError, match=r"t\.yaml:3.*colour"):
        LocalTarget("local", {"colour": "x", "_source": ("t.yaml", 3)})


def test_python_placeholder_uses_configured_interpreter(tmp_path):
    t = LocalTarget("local", {"python": sys.executable})
    h = run(t.launch(request(tmp_path, spec(
        [PYTHON, "-c", "import sys, time; print('PY', sys.executable, flush=True); "
         "time.sleep(9)"]))))
    assert sys.executable in wait_log(t, h, "PY ")
    run(t.stop(h))


@pytest.mark.parametrize(("config", "match"), [
    ({"env": {"A=B": "1"}}, r"env: 'A=B' is not an environment variable name"),
    ({"env": {"OK": "a\0b"}}, r"env: the value of OK contains a NUL byte"),
    ({"env": {"OK\n": "1"}}, r"env: 'OK\\n' is not an environment variable name"),
    ({"python": "/usr/bin/python3\0"}, r"python: must be the path of an interpreter"),
    ({"host": "$(touch /tmp/x)"}, r"host: .* is not an IP address or host name"),
    ({"host": "-h"}, r"host: .* is not an IP address or host name"),
])
def test_config_values_no_process_can_take_are_refused_by_name(config, match):
    # Before: Popen's "illegal environment variable name" or a resolver error, without the field.
    from hpcserve_jupyter.errors import RecipeError

    with pytest.raises(RecipeError, match=match):
        LocalTarget("local", config)
    for host in ("127.0.0.1", "0.0.0.0", "::", "::1", "node-1.cluster"):
        LocalTarget("local", {"host": host})


def test_nul_byte_in_an_argument_is_bad_input_naming_the_flag(tmp_path):
    t = LocalTarget("local", {"python": sys.executable})
    with pytest.raises(BadInput, match=r"the value of --chat-format contains a NUL byte"):
        run(t.launch(request(tmp_path, spec([PYTHON, "-c", "pass", "--chat-format", "a\0b"]))))
    assert not t._children  # nothing was started


def test_env_placeholders_are_filled_per_replica(tmp_path):
    # qdrant reads its port and host from QDRANT__SERVICE__HTTP_PORT / __HOST.
    t = LocalTarget("local", {"python": sys.executable})
    s = spec([PYTHON, "-c", "import os, time; print('ENV', os.environ['P'], os.environ['H'], "
              "flush=True); time.sleep(60)"], env=(("P", "{HPCSERVE_PORT}"),
                                                 ("H", "{HPCSERVE_HOST}")))
    h = run(t.launch(request(tmp_path, s)))
    try:
        port = h["replicas"][0]["port"]
        assert f"ENV {port} 127.0.0.1" in wait_log(t, h, "ENV ")
    finally:
        run(t.stop(h))


def test_a_huge_missing_program_name_is_cut_in_the_error(tmp_path):
    t = LocalTarget("local", {"python": "/nonexistent/" + "B" * 50_000})
    with pytest.raises(LaunchError) as caught:
        run(t.launch(request(tmp_path, spec([PYTHON, "-c", "pass"]))))
    assert len(caught.value.message) < 400 and "(50013 chars)" in caught.value.message


def test_a_bare_engine_program_is_found_beside_the_targets_python_first(tmp_path):
    """`python:` names an engine's venv; its console scripts (`chroma`, `transformers`) live
    beside that interpreter and are found there even when the venv is not on PATH."""
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    engine = venv_bin / "hpcserve-test-engine"
    engine.write_text(f"#!{sys.executable}\nimport sys, time\n"
                      "print('ENGINE', *sys.argv[1:], flush=True)\ntime.sleep(60)\n")
    engine.chmod(0o755)
    t = LocalTarget("venv", {"python": str(venv_bin / "python")})
    h = run(t.launch(request(tmp_path, spec([engine.name, "serve", "--port", PORT]))))
    try:
        port = h["replicas"][0]["port"]
        assert wait_log(t, h, "ENGINE").strip().endswith(f"ENGINE serve --port {port}")
        runner = psutil.Process(h["replicas"][0]["pid"])
        assert runner.cmdline()[-4:] == [str(engine), "serve", "--port", str(port)]
    finally:
        run(t.stop(h))
    # Not beside the interpreter nor on PATH: the usual error. A path is never looked up.
    with pytest.raises(LaunchError, match="'hpcserve-test-engine' was not found"):
        run(LocalTarget("local", {}).launch(request(tmp_path, spec([engine.name]), sid="s2")))
    with pytest.raises(LaunchError, match="was not found"):
        run(t.launch(request(tmp_path, spec([f"./{engine.name}"]), sid="s3")))
