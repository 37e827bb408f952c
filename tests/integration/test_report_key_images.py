"""The report stage with key images on: one Secondary Capture per decided finding, queued before the SR citing it."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from PIL import Image

from predictd.daemon import arrivals, outbox, queue, records, report, views
from predictd.daemon.db import Database
from predictd.daemon.lifecycle import StudyState
from predictd.daemon.stage import Advance, StageContext
from predictd.daemon.worker import Worker
from predictd.reporting import codes, uids
from tests.integration.pipeline_helpers import context, copy_as_new_study, drain, receive_file
from tests.support import CR_JLSL, pydicom_data_file


def _classify_then_report(ctx: StageContext) -> tuple[queue.Claim, records.RunView]:
    """Run classify through the worker, then the report stage itself, so its outbox rows can be inspected."""
    arrivals.sweep_ready(ctx.db, quiet_seconds=0)
    assert Worker(ctx, "test-worker").work_once()  # classify
    claim = queue.claim(ctx.db, "test-reporter", lease_seconds=60, states=[StudyState.CLASSIFIED])
    assert claim is not None
    assert report.run(ctx, claim) == Advance(StudyState.REPORTED)
    queue.finish(ctx.db, claim, StudyState.REPORTED)
    return claim, records.load_run(ctx.db, claim.study_id, claim.run_no)


def _own_equipment(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    return [item for item in ds.ContributingEquipmentSequence if item.get("DeviceUID") == uids.device_uid()]


def test_key_images_on_queue_one_sc_per_finding_before_the_sr(db: Database, tmp_path: Path) -> None:
    ctx = context(tmp_path, db, report={"key_images": True})
    stored = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
    _, view = _classify_then_report(ctx)
    decided = [p for p in view.predictions if not p.is_indeterminate]
    assert decided, "the tiny model has no thresholds: its top class is always decided"

    rows = outbox.deliveries(db, view.run_id)
    assert [d.kind for d in rows] == [outbox.DocumentKind.KEY_IMAGE] * len(decided) + [outbox.DocumentKind.SR]
    assert {d.destination for d in rows} == {outbox.OUTBOX_FOLDER}
    sr_uid = view.sr_sop_instance_uid
    assert sr_uid is not None and rows[-1].sop_instance_uid == sr_uid
    key_uids = [d.sop_instance_uid for d in rows[:-1]]
    for d in rows[:-1]:
        assert d.path == ctx.spool.document_path(stored.study_uid, view.run_no, d.sop_instance_uid)
        sc = pydicom.dcmread(d.path)
        assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert sc.StudyInstanceUID == stored.study_uid
        assert sc.SeriesInstanceUID == uids.key_image_series_uid(stored.study_uid)
        assert sc.BurnedInAnnotation == "YES" and sc.LossyImageCompression == "01"
        assert len(_own_equipment(sc)) == 1  # how the receiver recognises our own output coming back
    sr = hd.sr.srread(rows[-1].path)
    assert len(_own_equipment(sr)) == 1
    cited = [
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in hd.sr.utils.find_content_items(sr, name=codes.BEST_ILLUSTRATION, recursive=True)
    ]
    assert cited == key_uids

    drain(ctx)  # send: key images and SR reach the rows folder
    folder = ctx.settings.send.outbox_dir / stored.study_uid
    assert {path.stem for path in folder.glob("*.dcm")} == {*key_uids, sr_uid}
    assert views.study_detail(db, stored.study_uid)["state"] == StudyState.DONE  # type: ignore[index]


def test_key_images_off_sends_the_sr_alone(db: Database, tmp_path: Path) -> None:
    ctx = context(tmp_path, db)
    assert ctx.settings.report.key_images is False
    receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
    _, view = _classify_then_report(ctx)
    assert [d.kind for d in outbox.deliveries(db, view.run_id)] == [outbox.DocumentKind.SR]
    assert view.sr_path is not None
    assert not hd.sr.utils.find_content_items(hd.sr.srread(view.sr_path), name=codes.BEST_ILLUSTRATION, recursive=True)


@pytest.mark.filterwarnings("ignore:The string .* unlikely to represent the intended person name")
def test_rerun_after_a_late_image_names_the_first_sr_as_predecessor(db: Database, tmp_path: Path) -> None:
    ctx = context(tmp_path, db, report={"key_images": True})
    first = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "a.dcm"))
    drain(ctx)
    late = copy_as_new_study(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / "b.dcm", study_uid=first.study_uid)
    receive_file(ctx, late)
    _, run2 = _classify_then_report(ctx)
    assert run2.run_no == 2 and run2.predecessor_sr_uid is not None
    assert run2.sr_path is not None
    sr = pydicom.dcmread(run2.sr_path)
    [study_item] = sr.PredecessorDocumentsSequence
    [series_item] = study_item.ReferencedSeriesSequence
    assert series_item.SeriesInstanceUID == uids.sr_series_uid(first.study_uid)
    assert series_item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == run2.predecessor_sr_uid
    # run 2 covers both images: its key images are new objects (their UIDs derive from run 2's SR)
    kinds = [(d.kind, d.sop_instance_uid) for d in outbox.deliveries(db, run2.run_id)]
    assert [kind for kind, _ in kinds].count(outbox.DocumentKind.KEY_IMAGE) == 2
    assert run2.sr_sop_instance_uid is not None
    sr_uid = run2.sr_sop_instance_uid
    keys = [
        uids.finding_key(f"{p.model_name}@{p.model_version}", p.sop_instance_uid, p.laterality, p.region)
        for p in run2.predictions
        if not p.is_indeterminate
    ]
    expected = {uids.key_image_uid(sr_uid, key) for key in keys}
    assert {uid for kind, uid in kinds if kind == outbox.DocumentKind.KEY_IMAGE} == expected


def test_a_model_uninstalled_after_classify_still_words_the_report(db: Database, tmp_path: Path) -> None:
    """The run keeps the cards it was classified with and classify drew the overlays: the report needs no engine."""
    ctx = context(tmp_path, db, report={"key_images": True})
    receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
    arrivals.sweep_ready(ctx.db, quiet_seconds=0)
    assert Worker(ctx, "test-worker").work_once()  # classify, with the model resident
    classified = queue.claim(ctx.db, "test-reporter", lease_seconds=60, states=[StudyState.CLASSIFIED])
    assert classified is not None
    view = records.load_run(ctx.db, classified.study_id, classified.run_no)
    assert view.cards is not None and set(view.cards) == {"tiny_hip"}
    ctx.engine = None  # uninstalled, or the daemon restarted without it
    assert report.run(ctx, classified) == Advance(StudyState.REPORTED)
    done = records.load_run(ctx.db, classified.study_id, classified.run_no)
    label = view.cards["tiny_hip"].label(view.predictions[0].label).display
    assert done.report_text is not None and label in done.report_text
    kinds = [d.kind for d in outbox.deliveries(db, done.run_id)]
    assert kinds == [outbox.DocumentKind.KEY_IMAGE, outbox.DocumentKind.SR]


def test_classify_draws_the_overlays_and_a_retry_replaces_them(db: Database, tmp_path: Path) -> None:
    """Classify writes one overlay per decided finding beside the run's documents, and a retried classification
    removes what an earlier attempt left."""
    ctx = context(tmp_path, db, report={"key_images": True})
    stored = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
    stale = ctx.spool.overlay_path(stored.study_uid, 1, 99)
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"an earlier attempt's overlay")
    arrivals.sweep_ready(ctx.db, quiet_seconds=0)
    assert Worker(ctx, "test-worker").work_once()  # classify
    drawn = ctx.spool.overlay_paths(stored.study_uid, 1)
    assert drawn == [ctx.spool.overlay_path(stored.study_uid, 1, 0)]
    with Image.open(drawn[0]) as png:
        assert png.mode == "RGB" and max(png.size) == 1024


def test_with_key_images_off_classify_draws_none(db: Database, tmp_path: Path) -> None:
    ctx = context(tmp_path, db)
    stored = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
    arrivals.sweep_ready(ctx.db, quiet_seconds=0)
    assert Worker(ctx, "test-worker").work_once()  # classify
    assert views.study_detail(db, stored.study_uid)["state"] == StudyState.CLASSIFIED
    assert ctx.spool.overlay_paths(stored.study_uid, 1) == []
