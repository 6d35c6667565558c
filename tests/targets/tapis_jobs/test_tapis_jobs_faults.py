"""The tapis-jobs target when things go wrong: refused values (before any call), a submit
answered 500 (nothing left behind), a 401 (one token refresh), a job that FAILED (its message
and output tail), a job cancelled outside hpcserve, the API slow or down (unreachable, not
failed). Real tapipy, the stand-in's Jobs API, the real test SLURM cluster."""

from __future__ import annotations

import contextlib
import logging
import posixpath
import subprocess
from pathlib import Path

import pytest

from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.errors import BadInput, HpcserveError, LaunchError, RecipeError
from hpcserve_jupyter.sessions import State
from waiting import until

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]
TARGET = "hpc"
API_OPS = ("submitJob", "getJobSearchList", "createAppVersion", "getApp", "insert", "mkdir",
           "getSystem")


def ops(standin) -> list[str]:
    return [c.operation_id for c in standin.calls if c.operation_id]


@pytest.fixture
def make_hp(tapis_jobs_config):
    made: list[Hpcserve] = []

    def make(*, monitor: bool = True, **overrides) -> Hpcserve:
        h = Hpcserve(monitor=monitor, poll_interval=0.5,
                     target_configs={TARGET: {**tapis_jobs_config, **overrides}})
        made.append(h)
        return h

    yield make
    for h in made:
        with contextlib.suppress(Exception):
            for s in h.sessions(live_only=True):
                h.stop(s.id)
        with contextlib.suppress(Exception):
            h.close()


def job_record(standin, uuid: str) -> dict:
    """The job as the stand-in's Jobs API records it (what anyone listing it sees)."""
    return dict(standin.jobs.get(uuid).fields)


def unreachable_reason(hp: Hpcserve, sid: str) -> str:
    return next(e["message"] for e in reversed(hp.events(sid)) if e["kind"] == "unreachable")


@pytest.mark.parametrize(("key", "value"), [
    ("queue", "normal; rm -rf ~"), ("allocation", "$(id)"), ("system_id", "../x"),
    ("scheduler_options", ["--time=5"]),
])
def test_invalid_values_are_refused_before_any_call(make_hp, jobs_standin, key, value):
    hp = make_hp(**{key: value})
    with pytest.raises((RecipeError, BadInput)) as err:
        hp.launch("smollm2-135m", on=TARGET, wait=False)
    assert key in str(err.value) or key.split("_")[0] in str(err.value)
    assert not [o for o in ops(jobs_standin) if o in API_OPS]


def test_what_tapis_jobs_cannot_run_is_refused_before_any_call(make_hp, jobs_standin):
    hp = make_hp()
    with pytest.raises(BadInput, match="replicas"):
        hp.launch("smollm2-135m", on=TARGET, wait=False, gpus="2", gpu_per_replica="1")
    assert not [o for o in ops(jobs_standin) if o in API_OPS]


def test_submit_answered_500_leaves_nothing_behind(make_hp, jobs_standin, tapis_jobs_config):
    hp = make_hp()
    jobs_standin.fail_next("submitJob", 500)
    with pytest.raises(LaunchError, match=r"injected by the stand-in|HTTP 500") as err:
        hp.launch("smollm2-135m", on=TARGET, wait=False)
    assert "looked up by name and cancelled" in (err.value.hint or "")
    (s,) = hp.sessions()
    assert s.state == State.FAILED
    assert jobs_standin.jobs.jobs == {}  # no job at the Jobs API
    # the private directory (the env file with the key) was deleted again
    private = posixpath.join(tapis_jobs_config["storage_dir"], "sessions", s.id)
    assert not Path(private).exists()
    assert ops(jobs_standin).count("submitJob") == 1


def test_401_at_submit_refreshes_tokens_once(make_hp, jobs_standin):
    hp = make_hp()
    jobs_standin.fail_next("submitJob", 401)
    s = hp.launch("smollm2-135m", on=TARGET, wait=False)
    assert ops(jobs_standin).count("submitJob") == 2
    assert ops(jobs_standin).count("create_token") == 2
    assert s.handle["job_uuid"] in jobs_standin.jobs.jobs
    assert hp.stop(s.id).state == State.STOPPED


@pytest.mark.model
def test_failed_job_gives_its_message_and_output_tail(make_hp, jobs_standin):
    hp = make_hp()
    s = hp.launch("smollm2-135m", on=TARGET, model="/nonexistent/model.gguf", timeout=180)
    assert s.state == State.FAILED, (s.state, s.reason)
    assert "FAILED" in s.reason, s.reason
    assert job_record(jobs_standin, s.handle["job_uuid"])["lastMessage"].strip() in s.reason
    assert "/nonexistent/model.gguf" in (s.log_tail or ""), s.log_tail
    assert s.exit_code not in (None, 0)


@pytest.mark.model
def test_ready_session_survives_a_slow_api_and_notices_an_outside_cancel(make_hp, jobs_standin):
    hp = make_hp(request_timeout=1.0)
    s = hp.launch("smollm2-135m", on=TARGET, timeout=240)
    assert s.state == State.READY, (s.reason, s.log_tail)
    # The API answers too slowly: unknown, not failed; then it answers again.
    jobs_standin.delay(2.5, "getJobSearchList")
    st = until(lambda: (x := hp.status(s.id)).unreachable and x, 30)
    assert st and st.state == State.READY
    assert "did not answer" in unreachable_reason(hp, s.id)
    jobs_standin.clear_faults()
    assert until(lambda: not hp.status(s.id).unreachable, 30)
    # The API down (connections closed, no answer): unknown again, not failed; then back.
    jobs_standin.set_down()
    st = until(lambda: (x := hp.status(s.id)).unreachable and x, 30)
    assert st and st.state == State.READY
    jobs_standin.set_down(False)
    assert until(lambda: not hp.status(s.id).unreachable, 30)
    assert hp.prompt(s.id, "Say yes.", max_tokens=4) is not None
    # Cancelled in SLURM, outside Tapis and hpcserve: Tapis says FAILED ("remote status
    # CANCELLED"); the session is stopped, as on the SLURM target, with Tapis's message.
    remote = job_record(jobs_standin, s.handle["job_uuid"])["remoteJobId"]
    subprocess.run(["scancel", str(remote)], check=True)
    done = until(lambda: (x := hp.status(s.id)).state.terminal and x, 60)
    assert done and done.state == State.STOPPED, done
    assert "cancelled outside hpcserve" in done.reason and "CANCELLED" in done.reason
    kinds = [e["kind"] for e in hp.events(s.id)]
    assert "unreachable" in kinds and "reachable" in kinds and "failed" not in kinds


def test_one_search_call_per_tick_for_all_sessions(make_hp, jobs_standin):
    hp = make_hp(monitor=False)  # no monitor: the ticks below are the only polls
    ids = [hp.launch("smollm2-135m", on=TARGET, wait=False, cpus=1).id for _ in range(3)]
    assert len({hp.status(i).handle["job_uuid"] for i in ids}) == 3
    before = jobs_standin.calls_per_operation()
    for _ in range(3):
        hp.refresh()
    after = jobs_standin.calls_per_operation()
    searches = after.get("getJobSearchList", 0) - before.get("getJobSearchList", 0)
    assert searches == 3  # one per tick for the 3 jobs, not one per job
    assert after.get("getJob", 0) == before.get("getJob", 0)


def test_secrets_stay_out_of_logs_errors_and_app_definitions(make_hp, jobs_standin, caplog):
    caplog.set_level(logging.DEBUG)
    hp = make_hp()
    s = hp.launch("smollm2-135m", on=TARGET, wait=False)
    key = hp.manager.api_key(s)
    record = job_record(jobs_standin, s.handle["job_uuid"])
    apps = jobs_standin.apps.apps
    hp.stop(s.id)
    jobs_standin.fail_next("submitJob", 500)
    with contextlib.suppress(HpcserveError):
        hp.launch("smollm2-135m", on=TARGET, wait=False)
    texts = [caplog.text, repr(record), repr(apps),
             repr([(c.body, c.path) for c in jobs_standin.calls]),
             Path(hp.manager.home / "sessions.db").read_text(errors="ignore"),
             *(x.reason or "" for x in hp.sessions())]
    for text in texts:
        assert key not in text
