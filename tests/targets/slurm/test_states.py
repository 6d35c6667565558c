from hpcserve_jupyter.targets.base import Phase
from hpcserve_jupyter.targets.slurm.states import parse_sacct, parse_squeue

SQUEUE = """\
101|PENDING|Priority|
102|PENDING|Resources|
103|RUNNING|None|node17
104|COMPLETING|None|node17
105|CANCELLED|None|node17
106|FAILED|NonZeroExitCode|node3
107|TIMEOUT|TimeLimit|node3
108_4|RUNNING|None|node2
"""

SACCT = """\
106|FAILED|1:0|
106.batch|FAILED|1:0|
107|TIMEOUT|0:0|
109|CANCELLED by 1001|0:15|
110|OUT_OF_MEMORY|0:125|
111|NODE_FAIL|0:0|
"""


def test_squeue_states_map_to_phases_with_reasons():
    jobs = parse_squeue(SQUEUE)
    assert jobs["101"].phase == Phase.PENDING and jobs["101"].describe() == "PENDING: Priority"
    assert jobs["102"].describe() == "PENDING: Resources"
    assert jobs["103"].phase == Phase.RUNNING and jobs["103"].nodes == "node17"
    assert jobs["104"].phase == Phase.STOPPING
    assert jobs["105"].phase == Phase.STOPPED and jobs["105"].ended
    assert jobs["106"].phase == Phase.EXITED
    assert jobs["107"].phase == Phase.TIMEOUT
    assert "108" in jobs


def test_sacct_gives_exit_codes_and_skips_steps():
    jobs = parse_sacct(SACCT)
    assert set(jobs) == {"106", "107", "109", "110", "111"}
    assert jobs["106"].exit_code == 1 and "exit code 1" in jobs["106"].describe()
    assert jobs["109"].state == "CANCELLED" and jobs["109"].phase == Phase.STOPPED
    assert jobs["110"].phase == Phase.EXITED and "out of memory" in jobs["110"].describe()
    assert "node failed" in jobs["111"].describe()


def test_an_ended_job_without_an_accounted_exit_code_reports_the_engines(tmp_path):
    """Accounting may not give the exit code (no slurmdbd, a job completion log that lost the
    job after a slurmctld restart): the job's own exit_code file says how the engine ended."""
    from hpcserve_jupyter.targets.slurm.states import JobInfo
    from hpcserve_jupyter.targets.slurm.target import SlurmTarget

    (tmp_path / "exit_code").write_text("137\n")
    (tmp_path / "engine.log").write_text("GET /v1/models 200\n")
    target = SlurmTarget("c", {"host": "local"})
    handle = {"job_id": "7", "workdir": str(tmp_path)}
    st = target._status(handle, JobInfo("7", "FAILED"))
    assert st.phase == Phase.EXITED and st.exit_code == 137
    assert st.reason == "the job ended FAILED (the engine's exit code 137: killed by SIGKILL)"
    assert "GET /v1/models" in st.log_tail
    gone = target._status(handle, None)
    assert "no longer known to SLURM (the engine's exit code 137: killed by SIGKILL)" \
        in gone.reason
    accounted = target._status(handle, JobInfo("7", "FAILED", exit_code=1))
    assert accounted.reason == "the job ended FAILED (exit code 1)"  # sacct's own code wins


def test_squeue_time_limit_and_time_left():
    """%l and %L as squeue prints them (the limit while pending, MM:SS under an hour)."""
    jobs = parse_squeue("201|RUNNING|None|n1|10:00|9:58\n"
                        "202|PENDING|Priority||1-02:00:00|1-02:00:00\n"
                        "203|RUNNING|None|n1|UNLIMITED|UNLIMITED\n"
                        "204|RUNNING|None|n1|2:00:00|0:00\n"
                        "205|RUNNING|None|n1|NOT_SET|INVALID\n")
    assert (jobs["201"].time_limit_s, jobs["201"].time_left_s) == (600, 598)
    assert (jobs["202"].time_limit_s, jobs["202"].time_left_s) == (93600, 93600)
    assert (jobs["203"].time_limit_s, jobs["203"].time_left_s) == (None, None)
    assert (jobs["204"].time_limit_s, jobs["204"].time_left_s) == (7200, 0)
    assert (jobs["205"].time_limit_s, jobs["205"].time_left_s) == (None, None)
    # the four-field lines of older callers still parse, without times
    assert parse_squeue("206|RUNNING|None|n1\n")["206"].time_left_s is None
