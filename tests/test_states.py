"""Job states, their classic groups and the allowed-transition rules (no database needed)."""
from __future__ import annotations

import itertools

import pytest

from balsam.core import states
from balsam.core.states import (
    ACTIVE_STATES,
    ALLOWED,
    END_STATES,
    PROCESSABLE_STATES,
    RUNNABLE_STATES,
    STATES,
    USER_TARGETS,
    InvalidStateError,
    State,
    allowed_sources,
    check_transition,
    validate_state,
)

CLASSIC_STATES = [
    "CREATED", "AWAITING_PARENTS", "READY", "STAGED_IN", "PREPROCESSED", "RUNNING", "RUN_DONE",
    "POSTPROCESSED", "JOB_FINISHED", "RUN_TIMEOUT", "RUN_ERROR", "RESTART_READY", "FAILED",
    "USER_KILLED",
]

# The system transitions, spelled out edge by edge (reference 3.5 plus handler outcomes).
EXPECTED_EDGES = {
    ("CREATED", "AWAITING_PARENTS"), ("CREATED", "READY"), ("CREATED", "STAGED_IN"),
    ("CREATED", "PREPROCESSED"), ("CREATED", "FAILED"), ("CREATED", "USER_KILLED"),
    ("AWAITING_PARENTS", "READY"), ("AWAITING_PARENTS", "STAGED_IN"),
    ("AWAITING_PARENTS", "PREPROCESSED"), ("AWAITING_PARENTS", "FAILED"),
    ("AWAITING_PARENTS", "USER_KILLED"),
    ("READY", "STAGED_IN"), ("READY", "PREPROCESSED"), ("READY", "FAILED"), ("READY", "USER_KILLED"),
    ("STAGED_IN", "PREPROCESSED"), ("STAGED_IN", "FAILED"), ("STAGED_IN", "USER_KILLED"),
    ("PREPROCESSED", "RUNNING"), ("PREPROCESSED", "FAILED"), ("PREPROCESSED", "USER_KILLED"),
    ("RESTART_READY", "RUNNING"), ("RESTART_READY", "FAILED"), ("RESTART_READY", "USER_KILLED"),
    ("RUNNING", "RUN_DONE"), ("RUNNING", "RUN_ERROR"), ("RUNNING", "RUN_TIMEOUT"),
    ("RUNNING", "USER_KILLED"),
    ("RUN_DONE", "POSTPROCESSED"), ("RUN_DONE", "JOB_FINISHED"), ("RUN_DONE", "RESTART_READY"),
    ("RUN_DONE", "FAILED"), ("RUN_DONE", "USER_KILLED"),
    ("POSTPROCESSED", "JOB_FINISHED"), ("POSTPROCESSED", "FAILED"), ("POSTPROCESSED", "USER_KILLED"),
    ("RUN_TIMEOUT", "RESTART_READY"), ("RUN_TIMEOUT", "POSTPROCESSED"), ("RUN_TIMEOUT", "JOB_FINISHED"),
    ("RUN_TIMEOUT", "FAILED"), ("RUN_TIMEOUT", "USER_KILLED"),
    ("RUN_ERROR", "RESTART_READY"), ("RUN_ERROR", "POSTPROCESSED"), ("RUN_ERROR", "JOB_FINISHED"),
    ("RUN_ERROR", "FAILED"), ("RUN_ERROR", "USER_KILLED"),
}


def test_states_are_the_classic_fourteen_in_lifecycle_order():
    assert STATES == CLASSIC_STATES
    assert [s.value for s in State] == CLASSIC_STATES


def test_state_members_compare_equal_to_their_names():
    assert State.RUNNING == "RUNNING"
    assert str(State.USER_KILLED) == "USER_KILLED"
    assert f"{State.FAILED}" == "FAILED"


def test_classic_groups_have_the_classic_members():
    assert PROCESSABLE_STATES == ["CREATED", "AWAITING_PARENTS", "READY", "STAGED_IN", "RUN_DONE",
                                  "POSTPROCESSED", "RUN_TIMEOUT", "RUN_ERROR"]
    assert RUNNABLE_STATES == ["PREPROCESSED", "RESTART_READY"]
    assert ACTIVE_STATES == ["RUNNING"]
    assert END_STATES == ["JOB_FINISHED", "FAILED", "USER_KILLED"]


def test_the_four_classic_groups_partition_states():
    groups = [PROCESSABLE_STATES, RUNNABLE_STATES, ACTIVE_STATES, END_STATES]
    for a, b in itertools.combinations(groups, 2):
        assert not set(a) & set(b), (a, b)
    members = [s for g in groups for s in g]
    assert len(members) == len(set(members)) == len(STATES)
    assert set(members) == set(STATES)


def test_waiting_states_are_the_ones_before_dependencies_are_satisfied():
    assert states.WAITING_STATES == ["CREATED", "AWAITING_PARENTS"]


def test_allowed_table_has_a_row_for_every_state_and_only_valid_targets():
    assert set(ALLOWED) == set(State)
    for dsts in ALLOWED.values():
        assert dsts <= set(State)


def test_allowed_table_is_exactly_the_expected_edges():
    actual = {(src.value, dst.value) for src, dsts in ALLOWED.items() for dst in dsts}
    assert actual == EXPECTED_EDGES


@pytest.mark.parametrize("src,dst", sorted(EXPECTED_EDGES))
def test_every_allowed_edge_passes_the_system_check(src, dst):
    check_transition(src, dst)
    assert State(src) in allowed_sources(State(dst))


@pytest.mark.parametrize("src,dst", sorted(
    (a, b) for a in CLASSIC_STATES for b in CLASSIC_STATES if (a, b) not in EXPECTED_EDGES))
def test_every_other_edge_is_refused_for_the_system(src, dst):
    with pytest.raises(InvalidStateError, match=f"Balsam may not move a job from {src} to {dst}"):
        check_transition(src, dst)
    assert State(src) not in allowed_sources(State(dst))


def test_final_states_have_no_system_exit():
    for final in END_STATES:
        assert ALLOWED[State(final)] == frozenset()


def test_only_a_claimed_runnable_job_becomes_running():
    assert allowed_sources(State.RUNNING) == {State.PREPROCESSED, State.RESTART_READY}


def test_users_may_target_every_state_but_running():
    assert USER_TARGETS == set(State) - {State.RUNNING}
    assert allowed_sources(State.RUNNING, user=True) == frozenset()
    assert allowed_sources(State.RUNNING, user=True, force=True) == frozenset()
    with pytest.raises(InvalidStateError, match="a user may not move a job from PREPROCESSED to RUNNING"):
        check_transition("PREPROCESSED", "RUNNING", user=True)


@pytest.mark.parametrize("target", [s for s in CLASSIC_STATES if s not in ("RUNNING", "USER_KILLED")])
def test_a_user_may_move_any_unkilled_idle_job_to_any_other_non_running_state(target):
    expected = set(State) - {State(target), State.USER_KILLED, State.RUNNING}
    assert allowed_sources(State(target), user=True) == expected
    for src in expected:
        check_transition(src.value, target, user=True)


@pytest.mark.parametrize("target", [s for s in CLASSIC_STATES if s not in ("RUNNING", "USER_KILLED")])
def test_user_killed_is_sticky_without_force(target):
    with pytest.raises(InvalidStateError, match=f"a user may not move a job from USER_KILLED to {target}"):
        check_transition("USER_KILLED", target, user=True)
    check_transition("USER_KILLED", target, user=True, force=True)
    assert State.USER_KILLED in allowed_sources(State(target), user=True, force=True)


@pytest.mark.parametrize("target", [s for s in CLASSIC_STATES if s not in ("RUNNING", "USER_KILLED")])
def test_a_running_job_is_only_killed_by_a_user_unless_forced(target):
    with pytest.raises(InvalidStateError, match=f"a user may not move a job from RUNNING to {target}"):
        check_transition("RUNNING", target, user=True)
    check_transition("RUNNING", target, user=True, force=True)
    check_transition("RUNNING", "USER_KILLED", user=True)


def test_a_user_may_kill_any_job_not_already_killed():
    assert allowed_sources(State.USER_KILLED, user=True) == set(State) - {State.USER_KILLED}


def test_validate_state_accepts_names_case_and_space_insensitively():
    assert validate_state("RUN_DONE") is State.RUN_DONE
    assert validate_state(" run_done\n") is State.RUN_DONE
    assert validate_state(State.FAILED) is State.FAILED


@pytest.mark.parametrize("bad", ["", "DONE", "RUN DONE", "PARENT_KILLED", "42"])
def test_validate_state_error_names_the_bad_value_and_every_valid_state(bad):
    with pytest.raises(InvalidStateError) as info:
        validate_state(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert message.endswith("expected one of " + ", ".join(CLASSIC_STATES))


def test_invalid_state_error_is_a_value_error():
    assert issubclass(InvalidStateError, ValueError)


def test_check_transition_rejects_unknown_state_names():
    with pytest.raises(InvalidStateError, match="invalid state 'BOGUS'"):
        check_transition("CREATED", "BOGUS")
    with pytest.raises(InvalidStateError, match="invalid state 'BOGUS'"):
        check_transition("BOGUS", "READY", user=True)
