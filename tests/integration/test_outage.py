"""A destination outage: results wait without being given up, and go as soon as the destination answers again."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from predictd.daemon import jobs, outbox, queue, views
from predictd.daemon.db import Database, utcnow
from predictd.daemon.destinations import SendError
from predictd.daemon.destinations.dicom import echo
from predictd.daemon.lifecycle import StudyState
from predictd.daemon.stage import StageContext
from predictd.daemon.tables import Delivery
from tests.integration.pipeline_helpers import context, copy_as_new_study, drain, receive_file
from tests.support import CR_JLSL, free_port, wait_until


def _deliveries(db: Database, study_uid: str) -> list[dict]:
    detail = views.study_detail(db, study_uid)
    assert detail is not None
    return list(detail["runs"][0]["deliveries"])


def _answers(port: int) -> bool:
    try:
        return echo("127.0.0.1", port, "PACS", timeout=2) == 0
    except SendError:
        return False


def test_a_destination_that_answers_again_gets_its_queue_at_once(db: Database, tmp_path: Path) -> None:
    """After the PACS comes back the SR goes on the next probe, not at the end of a 10-minute backoff."""
    exe = shutil.which("storescp")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("dcmtk storescp is missing under CI")
        pytest.skip("dcmtk storescp not installed")
    port, peer = free_port(), tmp_path / "peer"
    peer.mkdir()
    pacs = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": port, "timeout_seconds": 2}
    ctx = context(tmp_path, db, send={"destinations": [pacs], "backoff_base_seconds": 600, "backoff_cap_seconds": 900})
    stored = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
    drain(ctx)
    (waiting,) = _deliveries(db, stored.study_uid)
    assert waiting["state"] == outbox.DeliveryState.PENDING and waiting["attempts"] == 1
    assert jobs.probe(ctx) == {}  # still down: nothing is made due
    assert drain(ctx) == 0  # and nothing is due for ten minutes
    proc = subprocess.Popen(
        [exe, "+xa", "-aet", "PACS", "-od", str(peer), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _answers(port), timeout=30, what="storescp to listen")
        assert jobs.probe(ctx) == {"pacs": 1}
        assert drain(ctx) >= 1
        (sent,) = _deliveries(db, stored.study_uid)
        assert sent["state"] == outbox.DeliveryState.SENT and sent["attempts"] == 2
        detail = views.study_detail(db, stored.study_uid)
        assert detail is not None and detail["state"] == StudyState.DONE
        (received,) = list(peer.iterdir())
        assert str(pydicom.dcmread(received).SOPInstanceUID) == detail["runs"][0]["sr_sop_instance_uid"]
    finally:
        proc.terminate()
        proc.wait(10)


def _waiting_on_a_dead_destination(db: Database, tmp_path: Path) -> tuple[StageContext, Delivery]:
    """A study through the pipeline whose one delivery failed once: its destination's port has no listener."""
    down = {"name": "down", "ae_title": "DOWN", "host": "127.0.0.1", "port": free_port(), "timeout_seconds": 2}
    ctx = context(tmp_path, db, send={"destinations": [down]})
    receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
    drain(ctx)
    with db.transaction() as s:
        (row,) = s.scalars(select(Delivery)).all()
        return ctx, row


def test_a_day_long_outage_gives_nothing_up_and_three_days_do(db: Database, tmp_path: Path) -> None:
    """Deliveries give up by age (send.give_up_after_hours, 72 by default), not by attempt count: a shortened clock
    drives 24 h of failed attempts at the capped backoff."""
    ctx, row = _waiting_on_a_dead_destination(db, tmp_path)
    delivery_id, queued = row.id, row.created_at
    assert queued is not None
    policy, give_up = ctx.send_policy, timedelta(hours=ctx.settings.send.give_up_after_hours)
    claim = queue.claim(db, "sender", lease_seconds=10**6, now=queued + timedelta(days=4))  # the deferred send
    assert claim is not None and claim.state == StudyState.REPORTED
    attempt = queued
    while attempt < queued + timedelta(hours=24):
        attempt += timedelta(minutes=15)  # the shipped backoff cap: 96 attempts in a day
        state = outbox.mark_attempt_failed(
            db, claim, delivery_id, "down", policy=policy, give_up_after=give_up, now=attempt
        )
        assert state == outbox.DeliveryState.PENDING, attempt - queued
    late = queued + timedelta(hours=72)
    final = outbox.mark_attempt_failed(db, claim, delivery_id, "down", policy=policy, give_up_after=give_up, now=late)
    assert final == outbox.DeliveryState.FAILED


def test_a_sender_whose_claim_was_taken_writes_nothing(db: Database, tmp_path: Path) -> None:
    """A worker whose lease was reaped mid-send must not record the delivery: the study's new owner decides."""
    ctx, row = _waiting_on_a_dead_destination(db, tmp_path)
    delivery_id, attempts = row.id, row.attempts
    later = utcnow() + timedelta(days=1)
    claim = queue.claim(db, "new-owner", lease_seconds=600, now=later)
    assert claim is not None
    stale = replace(claim, worker="reaped-worker")
    with pytest.raises(queue.LeaseLost):
        outbox.mark_sent(db, stale, delivery_id)
    with pytest.raises(queue.LeaseLost):
        outbox.mark_attempt_failed(db, stale, delivery_id, "down", policy=ctx.send_policy)
    with db.transaction() as s:
        row = s.get(Delivery, delivery_id)
        assert row is not None and (row.state, row.attempts) == (outbox.DeliveryState.PENDING, attempts)
    outbox.mark_sent(db, claim, delivery_id)  # the owner's write goes through
    with db.transaction() as s:
        assert s.get(Delivery, delivery_id).state == outbox.DeliveryState.SENT  # type: ignore[union-attr]
