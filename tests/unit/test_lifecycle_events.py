"""Every write to a study row is a lifecycle function with a typed event; nothing else in the daemon writes one."""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from predictd.daemon import lifecycle, views
from predictd.daemon.lifecycle import StudyEventKind, StudyState
from predictd.daemon.log import configure_logging
from predictd.daemon.tables import Study, StudyEvent
from tests.support import REPO
from tests.unit.test_lifecycle import RecordingSession

S, K = StudyState, StudyEventKind
NOW = datetime(2026, 11, 22, tzinfo=UTC)
LATER = NOW + timedelta(seconds=40)


def claimed_study(state: StudyState = S.READY, attempts: int = 0) -> Study:
    return Study(
        id=1,
        study_uid="1.2.3",
        state=state,
        run_no=2,
        attempts=attempts,
        claimed_by="ward:4242/w0",
        lease_until=NOW + timedelta(seconds=120),
        updated_at=NOW - timedelta(hours=1),
    )


def only_event(session: RecordingSession) -> StudyEvent:
    (event,) = session.added
    assert isinstance(event, StudyEvent)
    return event


def fields(e: StudyEvent) -> tuple[Any, ...]:
    return (e.kind, e.from_state, e.to_state, e.run_no, e.actor, e.reason, e.due_at)


def test_claim_takes_the_study_and_records_who() -> None:
    session, st = RecordingSession(), claimed_study()
    st.claimed_by = st.lease_until = None
    lifecycle.claim(session, st, "ward:4242/w1", lease_until=LATER, now=NOW)  # type: ignore[arg-type]
    assert (st.claimed_by, st.lease_until, st.state) == ("ward:4242/w1", LATER, S.READY)
    assert fields(only_event(session)) == (K.CLAIMED, S.READY, S.READY, 2, "ward:4242/w1", None, None)


def test_defer_frees_the_claim_without_counting_a_failure() -> None:
    session, st = RecordingSession(), claimed_study(S.REPORTED, attempts=1)
    lifecycle.defer(session, st, LATER, now=NOW, actor="ward:4242/w0")  # type: ignore[arg-type]
    assert (st.claimed_by, st.lease_until, st.next_attempt_at, st.attempts) == (None, None, LATER, 1)
    assert fields(only_event(session)) == (K.DEFERRED, S.REPORTED, S.REPORTED, 2, "ward:4242/w0", None, LATER)


def test_schedule_retry_counts_the_attempt_and_says_when() -> None:
    session, st = RecordingSession(), claimed_study(attempts=1)
    lifecycle.schedule_retry(session, st, "decoder crashed", retry_at=LATER, now=NOW, actor="w")  # type: ignore[arg-type]
    assert (st.claimed_by, st.attempts, st.next_attempt_at, st.updated_at) == (None, 2, LATER, NOW)
    assert st.reason == "attempt 2 failed: decoder crashed"
    assert fields(only_event(session)) == (K.RETRY_SCHEDULED, S.READY, S.READY, 2, "w", st.reason, LATER)


def test_give_up_counts_the_attempt_and_ends_failed() -> None:
    session, st = RecordingSession(), claimed_study(S.CLASSIFIED, attempts=4)
    lifecycle.give_up(session, st, "boom (after 5 attempts)", now=NOW, actor="w")  # type: ignore[arg-type]
    assert (st.state, st.attempts, st.claimed_by, st.reason) == (S.FAILED, 5, None, "boom (after 5 attempts)")
    assert fields(only_event(session)) == (
        K.TRANSITION,
        S.CLASSIFIED,
        S.FAILED,
        2,
        "w",
        "boom (after 5 attempts)",
        None,
    )


def test_reap_takes_the_expired_claim_away() -> None:
    session, st = RecordingSession(), claimed_study()
    lifecycle.reap(session, st, now=NOW)  # type: ignore[arg-type]
    assert (st.claimed_by, st.lease_until, st.attempts) == (None, None, 0)  # the caller counts the attempt
    assert fields(only_event(session)) == (
        K.REAPED,
        S.READY,
        S.READY,
        2,
        "reaper",
        "lease of ward:4242/w0 expired",
        None,
    )


def test_release_frees_a_dead_processs_claim() -> None:
    session, st = RecordingSession(), claimed_study()
    lifecycle.release(session, st, "that process is gone", now=NOW)  # type: ignore[arg-type]
    assert (st.claimed_by, st.lease_until) == (None, None)
    assert fields(only_event(session)) == (K.RELEASED, S.READY, S.READY, 2, "startup", "that process is gone", None)


def test_a_transition_ends_the_claim() -> None:
    session, st = RecordingSession(), claimed_study()
    lifecycle.transition(session, st, S.CANCELLED, now=NOW, actor="operator")  # type: ignore[arg-type]
    assert (st.claimed_by, st.lease_until) == (None, None)
    assert only_event(session).kind == K.TRANSITION


def test_instance_arrived_keeps_what_is_known_and_records_no_event() -> None:
    st = claimed_study(S.RECEIVING)
    st.last_instance_at, st.modality, st.patient_id = NOW, "CR", None
    for at in (LATER, NOW):  # an instance stamped earlier never moves the quiet period back
        lifecycle.instance_arrived(st, now=at, modality="DX", patient_id="P1", accession_number="A1", study_date=None)
    assert (st.last_instance_at, st.modality, st.patient_id, st.accession_number) == (LATER, "CR", "P1", "A1")


def test_a_new_run_is_logged_as_reopened(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_output=True)
    session, st = RecordingSession(), claimed_study(S.DONE)
    lifecycle.transition(session, st, S.READY, now=NOW, actor="operator", reason="retry requested")  # type: ignore[arg-type]
    assert capsys.readouterr().err == ""  # not a new run: no reopening
    st.state = S.DONE
    lifecycle.transition(session, st, S.RECEIVING, now=NOW, reason="late instance", new_run=True)  # type: ignore[arg-type]
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (line["event"], line["run_no"], line["from_state"], line["to_state"]) == (
        "study_reopened",
        3,
        "done",
        "receiving",
    )


def test_every_kind_fits_the_column_and_reads_as_a_sentence() -> None:
    assert all(len(kind) <= StudyEvent.__table__.c.kind.type.length for kind in StudyEventKind)  # type: ignore[attr-defined]
    for kind in StudyEventKind:
        line = views.describe_event(kind, S.READY, S.READY, actor="w", due_at=LATER)
        assert line != kind.value
    assert views.describe_event(K.TRANSITION, None, S.RECEIVING, actor=None, due_at=None) == "(new) → receiving"
    assert views.describe_event(K.CLAIMED, S.READY, S.READY, actor="w", due_at=None) == "claimed by w for classify"
    retry = views.describe_event(K.RETRY_SCHEDULED, S.READY, S.READY, actor="w", due_at=LATER)
    assert retry == f"retry scheduled at {LATER.isoformat()}"


# --- the rule, kept by a test: a study row is written in lifecycle.py only -------------------------------------------

STUDY_COLUMNS = frozenset(Study.__table__.columns.keys())
ALLOWED = {"lifecycle.py", "tables.py"}


def _study_writes(tree: ast.AST) -> list[str]:
    """Assignments to ``<study-ish name>.<column>``, and UPDATE/INSERT/DELETE statements or constructors of Study."""
    found: list[str] = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            for t in ast.walk(target):
                if (
                    isinstance(t, ast.Attribute)
                    and t.attr in STUDY_COLUMNS
                    and isinstance(t.value, ast.Name)
                    and ("study" in t.value.id.lower() or t.value.id == "st")
                ):
                    found.append(f"{node.lineno}: {t.value.id}.{t.attr} =")
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            args = [a.id for a in node.args if isinstance(a, ast.Name)]
            if name in {"update", "insert", "delete"} and "Study" in args:
                found.append(f"{node.lineno}: {name}(Study)")
            if name == "Study":
                found.append(f"{node.lineno}: Study(...)")
            if name == "setattr" and args and ("study" in args[0].lower() or args[0] == "st"):
                found.append(f"{node.lineno}: setattr({args[0]}, ...)")
    return found


def test_only_lifecycle_writes_a_study_row() -> None:
    daemon = REPO / "daemon"
    writes = {
        str(path.relative_to(daemon)): hits
        for path in sorted(daemon.rglob("*.py"))
        if path.name not in ALLOWED or path.parent != daemon
        if (hits := _study_writes(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert writes == {}, "write study rows through daemon.lifecycle's functions (each records its event)"


def test_the_rule_finds_what_it_looks_for() -> None:
    source = """
study.claimed_by = None
study.attempts += 1
s.execute(update(Study).values(next_attempt_at=now))
st.reason: str = "x"
Study(study_uid="1")
setattr(study, "state", "done")
delivery.attempts += 1
"""
    assert len(_study_writes(ast.parse(source))) == 6  # the delivery's column is not the study's
    assert _study_writes(ast.parse(Path(lifecycle.__file__).read_text(encoding="utf-8")))  # lifecycle does write
