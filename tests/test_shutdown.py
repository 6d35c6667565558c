"""How the facade and the manager shut down (GitHub issue 13, part 2).

A CLI run ended with "polling target tacc failed", a traceback and "RuntimeError: cannot
schedule new futures after shutdown": at exit Python stops concurrent.futures' worker threads
before it runs `atexit` handlers, and the facade, closed by one, kept its monitor ticking on
its loop thread in between; the target's poll (asyncio.to_thread) was refused, and the refusal
was even recorded as the target being unreachable.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading

import pytest

from hpcserve_jupyter import api, cli
from hpcserve_jupyter.errors import HpcserveError
from target_fixtures import pod_proxy, pods_config, standin  # noqa: F401

EXIT_SCRIPT = textwrap.dedent("""
    import asyncio, atexit, json
    from hpcserve_jupyter import api

    facades = [api.default(), api.Hpcserve(poll_interval=0.05)]  # neither closed by the script
    closed = {}  # facade number -> whether a worker thread was refused then

    def observe(n, manager):
        close = manager.close

        async def observed():
            try:  # what a target's close or a last poll needs: a worker thread
                await asyncio.to_thread(lambda: None)
                closed[n] = False
            except RuntimeError:
                closed[n] = True
            await close()

        manager.close = observed

    for n, hp in enumerate(facades):
        observe(n, hp.manager)
    # atexit handlers run after concurrent.futures has stopped its worker threads
    atexit.register(lambda: print(json.dumps(closed)))
""")


def test_exit_closes_facades_while_worker_threads_still_run(tmp_path):
    r = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    seen = json.loads(r.stdout)
    assert seen == {"0": False, "1": False}, (seen, r.stderr)  # both closed, none refused


def test_cli_closes_the_facade_it_made_and_only_that(capsys):
    assert not api.default_exists()
    assert cli.main(["status"]) == 0
    assert not api.default_exists()  # closed before main returned, not at exit
    hp = api.default()  # a caller's facade (tests and fuzzers call main in-process)
    try:
        assert cli.main(["status", "--json"]) == 0
        assert api.default() is hp and hp.sessions() == []
    finally:
        api.close_default()
    assert json.loads(capsys.readouterr().out) == []


def test_close_twice_and_use_after_close():
    hp = api.Hpcserve()
    hp.close()
    hp.close()  # no-op (it waited 30 s for a loop that no longer runs)
    with pytest.raises(HpcserveError, match="facade is closed"):
        hp.refresh()
    with pytest.raises(HpcserveError, match="facade is closed"):
        hp.launch("smollm2-135m", wait=False)


@pytest.mark.model
def test_close_lets_the_tick_in_flight_end_before_the_targets_close(
        pods_config, standin, caplog):  # noqa: F811
    """The monitor is stopped first; the tick it is in (a Pods poll held by the stand-in) ends
    before the target's connection is closed, and nothing of it is logged as a failure."""
    caplog.set_level(logging.DEBUG, logger="hpcserve_jupyter")
    hp = api.Hpcserve(poll_interval=0.2, target_configs={"pods": pods_config})
    s = hp.launch("smollm2-135m", on="pods", wait=False)
    lists = len(standin.calls_to("list_pods"))
    standin.delay(3.0, "list_pods", times=1)
    while standin._faults:  # the stand-in drops the delay once a poll is being held
        threading.Event().wait(0.02)
    closer = threading.Thread(target=hp.close)
    closer.start()
    closer.join(1.0)
    held = closer.is_alive()  # waiting for the held poll, not cancelling it
    closer.join(60)
    assert held and not closer.is_alive()
    assert len(standin.calls_to("list_pods")) == lists + 1  # the held poll; none after it
    again = api.Hpcserve(target_configs={"pods": pods_config})
    try:
        assert "unreachable" not in [e["kind"] for e in again.events(s.id)]
        again.stop(s.id)
    finally:
        again.close()
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not failures, [r.getMessage() for r in failures]
