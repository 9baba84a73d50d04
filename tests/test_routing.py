"""The routing table (:mod:`balsam.core.routing`) agrees with the allowed-transition table and
with what processing does (the scenario tests in ``tests/test_processing*.py`` run the moves;
here the table's derived state lists are checked against the classic groups and the code)."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from test_imports import imported_names

from balsam.core import routing, states
from balsam.core.routing import ROUTES, Actor, Step
from balsam.core.states import ALLOWED, State

REPO = Path(__file__).resolve().parents[1]


def test_every_routed_move_is_allowed() -> None:
    for r in ROUTES:
        assert r.targets, r
        assert r.targets <= ALLOWED[r.source], (r.source, r.targets - ALLOWED[r.source])


def test_every_allowed_system_move_is_routed() -> None:
    # USER_KILLED and FAILED are reachable from everywhere by kill / a failed step; every other
    # allowed move is one some route makes.
    for src, dsts in ALLOWED.items():
        routed = set().union(*(r.targets for r in routing.routes_from(src)))
        assert dsts - {State.USER_KILLED, State.FAILED} <= routed, src


def test_final_states_have_no_route_and_the_rest_do() -> None:
    for s in State:
        assert bool(routing.routes_from(s)) == (s.value not in states.END_STATES), s


def test_groups_follow_from_the_table() -> None:
    assert [s.value for s in routing.PROCESSING_STATES] == states.PROCESSABLE_STATES
    assert [s.value for s in routing.CLAIMABLE_STATES] == states.RUNNABLE_STATES
    assert routing.PARENT_STATES == [State.CREATED, State.AWAITING_PARENTS]
    assert routing.WORKER_STATES == [State.READY, State.STAGED_IN, State.RUN_DONE,
                                     State.RUN_TIMEOUT, State.RUN_ERROR]
    assert routing.PURE_STATES == [State.READY, State.STAGED_IN, State.RUN_DONE,
                                   State.POSTPROCESSED, State.RUN_TIMEOUT, State.RUN_ERROR]
    assert routing.HANDLER_STATES == [State.RUN_TIMEOUT, State.RUN_ERROR]


def test_steps_and_names() -> None:
    assert routing.worker_step("READY") is Step.STAGE_IN
    assert routing.worker_step("STAGED_IN") is Step.PREPROCESS
    assert routing.worker_step("RUN_DONE") is Step.POSTPROCESS
    assert routing.worker_step("RUN_ERROR") is Step.ERROR_HANDLER
    assert routing.worker_step("RUN_TIMEOUT") is Step.TIMEOUT_HANDLER
    assert routing.worker_step("POSTPROCESSED") is None  # stage-out is the transfer step's
    assert routing.worker_step("NOPE") is None
    assert routing.step_name("POSTPROCESSED") == "stage-out"
    assert routing.step_name("RUN_TIMEOUT") == "timeout handler"
    assert [r.actor for r in routing.routes_from(State.POSTPROCESSED)] == [Actor.PURE,
                                                                          Actor.TRANSFER]


def test_sql_in_takes_only_state_names() -> None:
    assert routing.sql_in([State.READY, "RUN_DONE"]) == "'READY', 'RUN_DONE'"
    try:
        routing.sql_in(["READY'; DROP TABLE x; --"])
    except ValueError:
        pass
    else:
        raise AssertionError("sql_in accepted a non-state")


def test_routing_imports_only_the_stdlib_and_states() -> None:
    path = REPO / "balsam" / "core" / "routing.py"
    names = imported_names(path.read_text(), "balsam.core.routing", False)
    balsam = {n for n in names if n.split(".")[0] == "balsam"}
    assert all(n == "balsam.core" or n.startswith("balsam.core.states") for n in balsam), balsam
    stdlib = set(sys.stdlib_module_names) | {"__future__", "balsam"}
    assert {n.split(".")[0] for n in names} <= stdlib, names


def test_processing_decides_every_pure_route() -> None:
    from balsam.processing import transitions

    pure = {r.when for r in ROUTES if r.actor is Actor.PURE}
    assert set(transitions.PURE_DECIDERS) == pure
    assert set(routing.When) == {r.when for r in ROUTES}  # no condition without a route


def test_transfer_states() -> None:
    from balsam.processing.transfers import items

    assert (routing.STAGE_IN_STATE, routing.STAGE_OUT_STATE) == (State.READY, State.POSTPROCESSED)
    assert items.STEP_STATE == {"in": "READY", "out": "POSTPROCESSED"}


def test_launcher_moves_follow_from_the_table() -> None:
    from balsam.core import launcher_moves

    assert launcher_moves.LAUNCHER_MOVES == {
        State.RUNNING: ("PREPROCESSED", "RESTART_READY"), State.RUN_DONE: ("RUNNING",),
        State.RUN_ERROR: ("RUNNING",), State.RUN_TIMEOUT: ("RUNNING",)}


def test_batch_row_transitions_are_closed() -> None:
    from balsam.core import batchstates as b

    assert set(b.ROW_TRANSITIONS) == b.ROW_STATES
    for src, dsts in b.ROW_TRANSITIONS.items():
        assert dsts <= b.ROW_STATES, src
        # every unfinished row may be cancelled by a user, or is being cancelled
        assert (not dsts) == (src in b.FINAL_ROW_STATES), src
        assert src in b.FINAL_ROW_STATES or src == b.PENDING_DELETION or b.PENDING_DELETION in dsts
    assert b.RUNNING_ROW_STATES <= b.SCHEDULER_STATES - b.FINAL_ROW_STATES


# Files that may spell a job state as a string: the definitions, the table schema and the
# shipped migrations (frozen history), and code naming another system's states that happen to
# share a word (platform/ may import no other balsam package).
STATE_LITERAL_ALLOWED = {
    "balsam/core/states.py": "the definitions",
    "balsam/core/schema.py": "the table schema (its state check)",
    "balsam/platform/schedulers/slurm.py": "Slurm's own job states (RUNNING, FAILED)",
    "balsam/platform/schedulers/local.py": "the local scheduler's raw state word (RUNNING)",
    "balsam/processing/transfers/globus.py": "Globus task statuses (FAILED)",
}


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are statements (docstrings, attribute docstrings)."""
    return {id(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}


def string_constants(source: str) -> list[tuple[int, str]]:
    """(line, text) of the string constants of ``source`` (f-strings' literal parts too), but
    docstrings."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


def state_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string constant in ``source`` that is a job state's name, or holds
    one quoted as a SQL literal (``'RUNNING'``). Docstrings and prose ("... recorded
    RUN_TIMEOUT") do not count."""
    names = {s.value for s in State}
    quoted = re.compile(r"'(" + "|".join(names) + r")'")
    return [(line, text) for line, text in string_constants(source)
            if text in names or quoted.search(text)]


def test_state_literal_finder() -> None:
    src = ('"""READY docstring"""\nA = "RUNNING"\nB = f"x = \'READY\' AND {A}"\n'
           'C = "3 job(s) recorded RUN_TIMEOUT"\nD = "READYish"\n')
    assert state_literals(src) == [(2, "RUNNING"), (3, "x = 'READY' AND ")]


def test_no_state_name_literals_outside_states() -> None:
    # A job state is named through balsam.core.states.State (or a group, or routing.sql_in for
    # SQL), so that a reader finds every use of a state by its name and a typo fails at import.
    found = []
    for path in sorted((REPO / "balsam").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in STATE_LITERAL_ALLOWED or rel.startswith("balsam/core/migrations/"):
            continue
        found += [f"{rel}:{line}: {text!r}" for line, text in state_literals(path.read_text())]
    assert not found, "state names as literals (use balsam.core.states.State):\n" + "\n".join(found)


def test_state_literal_allow_list_is_needed() -> None:
    # Every allowed file still exists and holds a state literal, so the list cannot go stale.
    for rel in STATE_LITERAL_ALLOWED:
        assert state_literals((REPO / rel).read_text()), rel
