"""The NF lifecycle table: every (state, event) pair, legal or not."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onvm.errors import LifecycleError
from onvm.manager._lifecycle import (
    _TRANSITIONS,
    TERMINAL_STATES,
    Lifecycle,
    NFEvent,
    NFState,
)

S, E = NFState, NFEvent

# The oracle, written out independently of the module's table.
EXPECTED = {
    (S.STARTING, E.REGISTERED): S.READY,
    (S.STARTING, E.STOP): S.STOPPING,
    (S.STARTING, E.DIED): S.FAILED,
    (S.READY, E.STARTED): S.RUNNING,
    (S.READY, E.STOP): S.STOPPING,
    (S.READY, E.DIED): S.FAILED,
    (S.RUNNING, E.STOP): S.STOPPING,
    (S.RUNNING, E.DIED): S.FAILED,
    (S.STOPPING, E.EXITED): S.STOPPED,
    (S.STOPPING, E.DIED): S.FAILED,
    (S.STARTING, E.FENCED): S.FAILED,
    (S.READY, E.FENCED): S.FAILED,
    (S.RUNNING, E.FENCED): S.FAILED,
    (S.STOPPING, E.FENCED): S.FAILED,
}

VERB = {
    E.REGISTERED: "register",
    E.STARTED: "start",
    E.STOP: "stop",
    E.EXITED: "finish",
    E.DIED: "fail",
    E.FENCED: "fence",
}

# Events that lead from STARTING to each state, to set a Lifecycle up.
PATH_TO = {
    S.STARTING: [],
    S.READY: [E.REGISTERED],
    S.RUNNING: [E.REGISTERED, E.STARTED],
    S.STOPPING: [E.REGISTERED, E.STARTED, E.STOP],
    S.STOPPED: [E.REGISTERED, E.STARTED, E.STOP, E.EXITED],
    S.FAILED: [E.DIED],
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def lifecycle_in(state: NFState, nf_id: int = 3) -> Lifecycle:
    life = Lifecycle(nf_id, clock=FakeClock())
    for event in PATH_TO[state]:
        life.apply(event)
    assert life.state is state
    return life


def test_table_matches_oracle() -> None:
    assert _TRANSITIONS == EXPECTED


@pytest.mark.parametrize(("state", "event"), list(itertools.product(S, E)),
                         ids=lambda v: v.name)
def test_every_state_and_event(state: NFState, event: NFEvent) -> None:
    life = lifecycle_in(state)
    history = list(life.history)
    expected = EXPECTED.get((state, event))
    assert life.can(event) is (expected is not None)
    if expected is None:
        with pytest.raises(LifecycleError) as info:
            life.apply(event)
        assert str(info.value) == (
            f"can't {VERB[event]} NF 3 in state {state.name}")
        assert info.value.code == "illegal_transition"
        # Nothing half-applied.
        assert life.state is state
        assert life.history == history
    else:
        assert life.apply(event) is expected
        assert life.state is expected
        assert life.history[:-1] == history
        assert life.history[-1][1] is expected
        assert life.history[-1][0] > history[-1][0]


@pytest.mark.parametrize(("state", "event", "message"), [
    (S.STARTING, E.STARTED, "can't start NF 3 in state STARTING"),
    (S.RUNNING, E.REGISTERED, "can't register NF 3 in state RUNNING"),
    (S.STOPPING, E.STOP, "can't stop NF 3 in state STOPPING"),
    (S.RUNNING, E.EXITED, "can't finish NF 3 in state RUNNING"),
    (S.STOPPED, E.DIED, "can't fail NF 3 in state STOPPED"),
    (S.FAILED, E.STOP, "can't stop NF 3 in state FAILED"),
])
def test_exact_messages(state: NFState, event: NFEvent, message: str) -> None:
    with pytest.raises(LifecycleError) as info:
        lifecycle_in(state).apply(event)
    assert str(info.value) == message


def test_message_names_the_nf() -> None:
    with pytest.raises(LifecycleError, match=r"^can't stop NF 17 in state STOPPED$"):
        lifecycle_in(S.STOPPED, nf_id=17).apply(E.STOP)


def test_new_lifecycle() -> None:
    life = Lifecycle(5, clock=lambda: 42.0)
    assert life.nf_id == 5
    assert life.state is S.STARTING
    assert life.history == [(42.0, S.STARTING)]
    assert not life.terminal
    assert repr(life) == "Lifecycle(nf_id=5, state=STARTING)"


def test_default_clock_is_monotonic() -> None:
    life = Lifecycle(1)
    life.apply(E.REGISTERED)
    assert life.history[1][0] >= life.history[0][0]


@pytest.mark.parametrize("state", list(S), ids=lambda s: s.name)
def test_terminal(state: NFState) -> None:
    life = lifecycle_in(state)
    assert life.terminal is (state in (S.STOPPED, S.FAILED))
    assert (state in TERMINAL_STATES) is life.terminal


def test_terminal_states_have_no_exits() -> None:
    assert not [key for key in _TRANSITIONS if key[0] in TERMINAL_STATES]


def test_every_live_state_can_die_or_stop() -> None:
    for state in S:
        if state not in TERMINAL_STATES:
            assert _TRANSITIONS[(state, E.DIED)] is S.FAILED
            assert _TRANSITIONS[(state, E.FENCED)] is S.FAILED
            assert (state, E.STOP) in _TRANSITIONS or state is S.STOPPING


def test_every_event_has_a_verb() -> None:
    # An illegal move must produce a message, never a KeyError.
    for event in E:
        life = lifecycle_in(S.FAILED)
        with pytest.raises(LifecycleError):
            life.apply(event)


@given(st.lists(st.sampled_from(list(E)), max_size=20))
def test_random_event_sequences(events: list[NFEvent]) -> None:
    life = Lifecycle(9, clock=FakeClock())
    applied = 0
    for event in events:
        before = life.state
        if (before, event) in EXPECTED:
            assert life.apply(event) is EXPECTED[(before, event)]
            applied += 1
        else:
            with pytest.raises(LifecycleError):
                life.apply(event)
            assert life.state is before
    assert len(life.history) == applied + 1
    assert [s for _, s in life.history][-1] is life.state
    times = [t for t, _ in life.history]
    assert times == sorted(times)
