import pytest

from hpcserve_jupyter.sessions import ALLOWED, InvalidTransition, Session, State


def make() -> Session:
    return Session(id="abcd1234", name="s-1", recipe="r", backend="b", target="local")


def test_happy_path_and_timestamps():
    s = make()
    for state in (State.STARTING, State.READY, State.STOPPING, State.STOPPED):
        assert s.transition(state, f"to {state}")
    assert s.ready_at and s.ended_at and s.reason == "to stopped"


def test_same_state_is_a_noop_that_may_update_the_reason():
    s = make()
    assert s.transition(State.PENDING, "Priority") is False
    assert s.reason == "Priority"


@pytest.mark.parametrize("end", [State.STOPPED, State.FAILED, State.TIMEOUT])
def test_terminal_states_are_final(end):
    s = make()
    s.transition(end)
    for state in State:
        if state != end:
            with pytest.raises(InvalidTransition):
                s.transition(state)


def test_no_way_back_to_starting_from_ready():
    s = make()
    s.transition(State.READY)
    with pytest.raises(InvalidTransition, match="ready to starting"):
        s.transition(State.STARTING)
    assert ALLOWED[State.READY] == {State.STOPPING, State.STOPPED, State.FAILED, State.TIMEOUT}


def test_round_trip_and_public_view():
    s = make()
    s.handle = {"pid": 1}
    again = Session.from_dict(s.to_dict())
    assert again == s
    pub = s.public()
    assert "handle" not in pub and pub["state"] == "pending"


def _timed(**kw) -> Session:
    s = Session(id="t1", name="t", recipe="r", backend="b", target="local", created_at=1000.0,
                last_activity=1000.0, **kw)
    s.state = State.READY
    return s


def test_time_left_is_the_nearer_of_the_targets_end_and_the_max_lifetime():
    s = _timed(max_lifetime_s=3600, time_limit_s=600, ends_at=1700.0)
    t = s.timing(now=1100.0)
    assert (t["time_limit_s"], t["time_left_s"]) == (600, 600)
    assert t["ends_at"] == "1970-01-01T00:28:20+00:00"
    s.ends_at = 9000.0  # the job's end is now later than the max lifetime (autostop)
    t = s.timing(now=1100.0)
    assert (t["time_limit_s"], t["time_left_s"]) == (3600, 3500)


def test_time_left_before_start_and_after_the_end():
    s = _timed(time_limit_s=600)  # queued: the limit is known, the end is not
    s.state = State.PENDING
    assert s.timing(now=1100.0) == {"time_limit_s": 600, "time_left_s": None,
                                    "ends_at": None, "idle_stop_in_s": None}
    s = _timed(max_lifetime_s=60)
    assert s.timing(now=5000.0)["time_left_s"] == 0  # past: 0, never negative
    s.state = State.STOPPED
    assert s.timing(now=5000.0)["time_left_s"] is None
    assert _timed().timing(now=5000.0)["time_limit_s"] is None  # nothing limits it


def test_idle_stop_counts_from_the_last_request_while_ready():
    s = _timed(idle_timeout_s=900)
    s.last_activity = 1500.0
    assert s.timing(now=1600.0)["idle_stop_in_s"] == 800
    s.state = State.STARTING
    assert s.timing(now=1600.0)["idle_stop_in_s"] is None


def test_public_view_carries_the_timing_and_not_the_warning_flags():
    data = _timed(max_lifetime_s=3600).public()
    assert {"time_limit_s", "time_left_s", "ends_at", "idle_stop_in_s"} <= set(data)
    assert "expiry_warned" not in data and "idle_warned_at" not in data
