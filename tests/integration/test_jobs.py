"""Periodic jobs on real databases: the sweep makes quiet studies ready, the reaper frees expired claims,
the purge removes spool files of long-ended studies only; and a process without models says so."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from predictd.daemon import jobs, queue, retention, views
from predictd.daemon.app import load_engine
from predictd.daemon.db import Database, utcnow
from predictd.daemon.lifecycle import StudyState
from predictd.daemon.log import configure_logging
from tests.integration.pipeline_helpers import context, copy_as_new_study, drain, receive_file, settings_for
from tests.support import CR_JLSL, wait_until


def test_sweep_reap_and_purge(db: Database, tmp_path: Path) -> None:
    ctx = context(tmp_path, db, queue={"lease_seconds": 0.01, "max_attempts": 5}, spool={"retention_days": 0})
    done = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "a.dcm"))
    drain(ctx)
    waiting = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "b.dcm"))
    assert jobs.sweep(ctx) == [waiting.study_uid]
    claim = queue.claim(db, "dead-worker", lease_seconds=0.01)
    assert claim is not None and claim.study_uid == waiting.study_uid
    # The lease was 10 ms; poll the reaper until it frees the study (no fixed sleep).
    assert wait_until(lambda: jobs.reap(ctx), timeout=10, what="the reaper") == [waiting.study_uid]
    assert queue.claim(db, "w", lease_seconds=60, now=utcnow() + timedelta(hours=1)) is not None
    assert jobs.purge(ctx) >= 2  # the done study's image and SR
    assert not done.path.exists()
    assert waiting.path.exists()  # not ended: kept
    assert jobs.purge(ctx) == 0


def test_no_models_is_logged_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_output=True)
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'x.db'}")
    assert load_engine(settings) is None
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "no_models" and line["level"] == "error"
    assert "install-demo" in line["reason"]


def test_worker_without_models_leaves_ready_studies_waiting(db: Database, tmp_path: Path) -> None:
    ctx = context(tmp_path, db)
    ctx.engine = None
    stored = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "a.dcm"))
    assert drain(ctx) == 0
    assert views.counts_by_state(db) == {StudyState.READY: 1}
    assert stored.path.exists()


def test_late_images_after_the_purge_are_classified_alone(db: Database, tmp_path: Path) -> None:
    """Retention deleted the first images; a late one reopens the study and its run reads only what is on disk."""
    ctx = context(tmp_path, db, spool={"retention_days": 0})
    first = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "a.dcm"))
    drain(ctx)
    assert jobs.purge(ctx) >= 2 and not first.path.exists()
    late = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "b.dcm", study_uid=first.study_uid))
    drain(ctx)
    detail = views.study_detail(db, first.study_uid)
    assert detail is not None and detail["state"] == StudyState.DONE, detail.get("reason")
    run2 = detail["runs"][-1]
    assert [p["sop_instance_uid"] for p in run2["predictions"]] == [late.sop_instance_uid]
    assert jobs.purge(ctx) >= 2 and not late.path.exists()
    assert jobs.purge(ctx) == 0  # nothing left to find


def test_purge_spares_an_instance_written_while_it_runs(db: Database, tmp_path: Path) -> None:
    """The purge deletes the files its rows name, not the study's folder: a late image landing there survives."""
    ctx = context(tmp_path, db, spool={"retention_days": 0})
    first = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "a.dcm"))
    drain(ctx)
    (batch,) = retention.purgeable(db, utcnow())
    late = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "b.dcm", study_uid=first.study_uid))
    assert late.path.parent.parent == first.path.parent.parent  # the same study folder
    retention.mark_purged(db, batch.instance_ids)
    ctx.spool.purge(batch.study_uid, batch.instance_paths, batch.run_nos)
    assert late.path.exists() and not first.path.exists()
