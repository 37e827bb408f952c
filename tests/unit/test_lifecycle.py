"""The study state machine: one table, every move checked, every move recorded."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from types import SimpleNamespace
from typing import Any

import pytest

from predictd.daemon import lifecycle, wakeup
from predictd.daemon.lifecycle import TERMINAL, TRANSITIONS, WORK, IllegalTransition, StudyState
from predictd.daemon.tables import Study, StudyEvent

S = StudyState
NOW = datetime(2026, 11, 22, tzinfo=UTC)


class RecordingSession:
    """Collects what transition() adds, and whether it marked work available (daemon.wakeup): all it needs."""

    def __init__(self) -> None:
        self.added: list[Any] = []
        self.info: dict[str, Any] = {}

    def add(self, obj: Any) -> None:
        self.added.append(obj)

    def get_bind(self) -> Any:
        return SimpleNamespace(dialect=SimpleNamespace(name="sqlite"))


def study(state: StudyState) -> Study:
    return Study(id=1, study_uid="1.2.3", state=state, run_no=1, attempts=2, next_attempt_at=NOW)


def test_every_state_has_a_row_and_work_states_are_not_terminal() -> None:
    assert set(TRANSITIONS) == set(StudyState)
    assert not set(WORK) & TERMINAL
    assert all(S.CANCELLED in TRANSITIONS[s] for s in StudyState if s not in TERMINAL)


@pytest.mark.parametrize("current", list(StudyState))
@pytest.mark.parametrize("to", list(StudyState))
def test_transition_allows_exactly_the_table(current: StudyState, to: StudyState) -> None:
    session, st = RecordingSession(), study(current)
    if to in TRANSITIONS[current]:
        lifecycle.transition(session, st, to, now=NOW, actor="t", reason="why")  # type: ignore[arg-type]
        assert st.state == to and st.next_attempt_at is None
        assert st.attempts == (2 if to in TERMINAL else 0)  # an end state keeps the count the operator reads
        (event,) = session.added
        assert isinstance(event, StudyEvent)
        assert (event.from_state, event.to_state, event.actor, event.reason) == (current, to, "t", "why")
    else:
        with pytest.raises(IllegalTransition):
            lifecycle.transition(session, st, to, now=NOW)  # type: ignore[arg-type]
        assert st.state == current and session.added == []


def test_new_run_numbers_the_event_with_the_new_run() -> None:
    session, st = RecordingSession(), study(S.DONE)
    lifecycle.transition(session, st, S.RECEIVING, now=NOW, new_run=True)  # type: ignore[arg-type]
    assert st.run_no == 2 and session.added[0].run_no == 2


def test_the_happy_path_is_the_pipeline() -> None:
    path = [S.RECEIVING, S.READY, S.CLASSIFIED, S.REPORTED, S.DONE]
    assert all(b in TRANSITIONS[a] for a, b in pairwise(path))
    assert WORK == {S.READY: "classify", S.CLASSIFIED: "report", S.REPORTED: "send"}


def test_the_worker_pipeline_table_is_the_lifecycles_work() -> None:
    from predictd.daemon.worker import PIPELINE

    assert {state: stage.name for state, stage in PIPELINE.items()} == WORK
    assert [state for state, stage in PIPELINE.items() if stage.run_batch is not None] == [S.READY]


@pytest.mark.parametrize("to", list(StudyState))
def test_a_move_into_a_working_state_wakes_the_workers(to: StudyState) -> None:
    allowed = [src for src, targets in TRANSITIONS.items() if to in targets]
    if not allowed:
        pytest.skip(f"nothing moves to {to}")
    session = RecordingSession()
    lifecycle.transition(session, study(allowed[0]), to, now=NOW)  # type: ignore[arg-type]
    assert wakeup.marked(session) == (to in WORK)  # type: ignore[arg-type]
