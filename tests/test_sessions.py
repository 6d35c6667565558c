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
