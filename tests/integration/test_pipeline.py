"""The whole path without the network: spool → queue → classify → report → send, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from predictd.daemon import arrivals, views
from predictd.daemon.db import Database
from predictd.daemon.lifecycle import StudyState
from predictd.daemon.worker import Worker
from predictd.models.card import Applicability
from predictd.reporting import codes, uids
from tests.integration.pipeline_helpers import context, copy_as_new_study, drain, receive_file
from tests.support import CR_JLSL, assert_dciodvfy_clean, free_port, pydicom_data_file, wait_until


def study(db: Database, uid: str) -> dict:
    detail = views.study_detail(db, uid)
    assert detail is not None
    return detail


def test_real_cr_study_ends_done_with_an_sr_in_the_outbox_folder(db: Database, tmp_path: Path) -> None:
    ctx = context(tmp_path, db)
    src = copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm")
    stored = receive_file(ctx, src)
    assert drain(ctx) == 3  # classify, report, send
    detail = study(db, stored.study_uid)
    assert detail["state"] == StudyState.DONE
    (run,) = detail["runs"]
    assert [p["sop_instance_uid"] for p in run["predictions"]] == [stored.sop_instance_uid]
    assert run["sr_sop_instance_uid"] == uids.sr_instance_uid(stored.study_uid, 1, run["model_versions"])
    assert [(d["destination"], d["state"]) for d in run["deliveries"]] == [("outbox-folder", "sent")]
    folder = ctx.settings.send.outbox_dir / stored.study_uid
    sr_file = folder / f"{run['sr_sop_instance_uid']}.dcm"
    sr = hd.sr.srread(sr_file)
    assert sr.StudyInstanceUID == stored.study_uid
    assert stored.sop_instance_uid in str(sr)
    assert (folder / f"{run['sr_sop_instance_uid']}.txt").read_text() == run["report_text"] + "\n"
    assert "untrained" in run["report_text"].lower()


def test_undecodable_pixels_fail_their_study_and_others_go_through(db: Database, tmp_path: Path) -> None:
    ctx = context(tmp_path, db)
    bad = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "bad.dcm", garbage_pixels=True))
    good = receive_file(ctx, copy_as_new_study(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / "good.dcm"))
    drain(ctx)
    failed = study(db, bad.study_uid)
    assert failed["state"] == StudyState.FAILED
    assert "cannot be decoded" in failed["reason"] and bad.sop_instance_uid in failed["reason"]
    assert study(db, good.study_uid)["state"] == StudyState.DONE


def test_one_classify_call_spans_several_ready_studies(db: Database, tmp_path: Path) -> None:
    ctx = context(tmp_path, db, workers={"batch_studies": 8})
    uids = [receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / f"{i}.dcm")).study_uid for i in range(3)]
    arrivals.sweep_ready(db, quiet_seconds=0)
    assert Worker(ctx, "w").work_once()
    assert [study(db, uid)["state"] for uid in uids] == [StudyState.CLASSIFIED] * 3


def test_study_no_model_applies_to_ends_skipped_with_the_reason(db: Database, tmp_path: Path) -> None:
    ctx = context(
        tmp_path,
        db,
        model={"applies_to": Applicability(body_parts=("hip_pelvis",)), "bilateral": True},
        report={"send_not_assessed": False},
    )
    chest = receive_file(ctx, copy_as_new_study(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / "chest.dcm"))
    hip = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
    drain(ctx)
    skipped = study(db, chest.study_uid)
    assert skipped["state"] == StudyState.SKIPPED
    assert "no installed model applies to body part chest" in skipped["reason"]
    done = study(db, hip.study_uid)
    assert done["state"] == StudyState.DONE
    assert len(done["runs"][0]["predictions"]) == 1  # a portrait single-hip view is read whole


def test_late_instance_opens_run_two_with_its_own_sr(db: Database, tmp_path: Path) -> None:
    ctx = context(tmp_path, db)
    first = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "a.dcm"))
    drain(ctx)
    receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "b.dcm", study_uid=first.study_uid))
    drain(ctx)
    detail = study(db, first.study_uid)
    assert detail["state"] == StudyState.DONE and detail["run_no"] == 2
    run1, run2 = detail["runs"]
    assert len(run2["predictions"]) == 2  # the new run covers the whole study
    assert run1["sr_sop_instance_uid"] != run2["sr_sop_instance_uid"]
    assert len(list((ctx.settings.send.outbox_dir / first.study_uid).glob("*.dcm"))) == 2
    # The second SR names the first as its predecessor (IHE AIR: a result that supersedes an earlier one says so).
    second = pydicom.dcmread(ctx.settings.send.outbox_dir / first.study_uid / f"{run2['sr_sop_instance_uid']}.dcm")
    (study_item,) = second.PredecessorDocumentsSequence
    (series_item,) = study_item.ReferencedSeriesSequence
    (instance_item,) = series_item.ReferencedSOPSequence
    assert study_item.StudyInstanceUID == first.study_uid
    assert instance_item.ReferencedSOPInstanceUID == run1["sr_sop_instance_uid"]
    first_sr = pydicom.dcmread(ctx.settings.send.outbox_dir / first.study_uid / f"{run1['sr_sop_instance_uid']}.dcm")
    assert "PredecessorDocumentsSequence" not in first_sr


@pytest.fixture
def storescp(tmp_path: Path):  # type: ignore[no-untyped-def]
    if not shutil.which("storescp"):
        pytest.skip("dcmtk storescp not installed")
    port, out = free_port(), tmp_path / "peer"
    out.mkdir()
    proc = subprocess.Popen(
        ["storescp", "-aet", "PACS", "-od", str(out), "+xa", str(port)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


def test_unreachable_destination_retries_without_blocking_the_other(
    db: Database, tmp_path: Path, storescp: tuple[int, Path]
) -> None:
    peer_port, peer_dir = storescp
    down_port = free_port()
    destinations = [
        {"name": "down", "ae_title": "DOWN", "host": "127.0.0.1", "port": down_port, "timeout_seconds": 2},
        {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": peer_port},
    ]
    ctx = context(tmp_path, db, send={"destinations": destinations, "max_attempts": 3})
    stored = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
    wait_until(
        lambda: drain(ctx) == 0 and study(db, stored.study_uid)["state"] == StudyState.FAILED,
        timeout=60,
        what="the down destination to exhaust its attempts",
    )
    detail = study(db, stored.study_uid)
    by_name = {d["destination"]: d for d in detail["runs"][0]["deliveries"]}
    assert by_name["pacs"]["state"] == "sent" and by_name["pacs"]["attempts"] == 1
    assert by_name["down"]["state"] == "failed" and by_name["down"]["attempts"] == 3
    assert "down" in detail["reason"]
    (received,) = list(peer_dir.iterdir())
    assert pydicom.dcmread(received).SOPInstanceUID == detail["runs"][0]["sr_sop_instance_uid"]


def test_study_no_model_applies_to_gets_a_not_assessed_sr_naming_the_models(db: Database, tmp_path: Path) -> None:
    """The reading room sees an answer, not silence: a short SR and text, which models were considered and why."""
    ctx = context(tmp_path, db, model={"applies_to": Applicability(body_parts=("hip_pelvis",))})
    chest = receive_file(ctx, copy_as_new_study(pydicom_data_file("RG1_UNCR.dcm"), tmp_path / "chest.dcm"))
    drain(ctx)
    detail = study(db, chest.study_uid)
    assert detail["state"] == StudyState.DONE
    (run,) = detail["runs"]
    assert run["predictions"] == []
    text = run["report_text"]
    assert text.splitlines()[0] == "Not assessed by AI: no installed model applies to body part chest (from tags)."
    assert "Models considered: tiny_hip@" in text and "(hip pelvis)" in text
    sr_file = ctx.settings.send.outbox_dir / chest.study_uid / f"{run['sr_sop_instance_uid']}.dcm"
    sr = hd.sr.srread(sr_file)
    (group,) = hd.sr.MeasurementReport.from_sequence([sr]).get_image_measurement_groups()
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation[0].value == codes.NOT_ASSESSED
    reasons = hd.sr.utils.find_content_items(group[0], name=codes.NOT_ASSESSED_REASON)
    assert [r.TextValue for r in reasons] == ["no installed model applies to body part chest (from tags)"]
    assert_dciodvfy_clean(sr_file)


def test_secondary_capture_without_modality_gets_an_sr(db: Database, tmp_path: Path) -> None:
    """img2dcm of a JPEG (as film scanners make them) has no Modality: the report must not fail on it."""
    if shutil.which("img2dcm") is None:
        if os.environ.get("CI"):
            pytest.fail("img2dcm (dcmtk) is missing under CI")
        pytest.skip("img2dcm (dcmtk) is not installed")
    jpeg = tmp_path / "hip.jpg"
    Image.fromarray(np.asarray(pydicom.dcmread(CR_JLSL).pixel_array >> 2, dtype=np.uint8)).save(jpeg)
    sc = tmp_path / "sc.dcm"
    subprocess.run(["img2dcm", str(jpeg), str(sc)], check=True, capture_output=True)
    ds = pydicom.dcmread(sc)
    assert "Modality" not in ds
    ds.BodyPartExamined = "HIP"
    ds.save_as(sc)
    ctx = context(tmp_path, db, report={"key_images": True})
    stored = receive_file(ctx, sc)
    drain(ctx)
    detail = study(db, stored.study_uid)
    assert detail["state"] == StudyState.DONE, detail.get("reason")
    assert detail["runs"][0]["sr_sop_instance_uid"]


def test_a_document_that_cannot_be_built_fails_at_once_without_phi(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deterministic error in building the SR is not retried, and its reason quotes no patient value."""
    from predictd.daemon import report

    def broken(sources: list[pydicom.Dataset], *args: object, **kwargs: object) -> pydicom.Dataset:
        raise AttributeError(f"'FileDataset' has no attribute 'X' (patient {sources[0].PatientName})")

    monkeypatch.setattr(report, "build_sr", broken)
    ctx = context(tmp_path, db, queue={"max_attempts": 5})
    src = copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm")
    ds = pydicom.dcmread(src)
    ds.PatientName = "Doe^Jane"
    ds.save_as(src)
    stored = receive_file(ctx, src)
    drain(ctx)
    detail = study(db, stored.study_uid)
    assert detail["state"] == StudyState.FAILED
    assert "cannot build the documents: AttributeError" in detail["reason"]
    assert "Doe^Jane" not in detail["reason"] and "[redacted]" in detail["reason"]
    assert detail["attempts"] <= 1


def test_a_birth_date_that_is_not_a_date_is_left_out_of_the_sr_and_out_of_every_log(
    db: Database, tmp_path: Path
) -> None:
    """highdicom raised "Unable to convert 'ZQXDOB1923' to 'DA'" (quoting the PHI) and the report failed: the SR's
    copy leaves such a value empty, the log names the keyword only, and the study is done."""
    from structlog.testing import capture_logs

    src = copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm")
    ds = pydicom.dcmread(src)
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):  # pydicom's check on assignment, here
        ds.PatientBirthDate = "ZQXDOB1923"
    ds.save_as(src)
    ctx = context(tmp_path, db)
    with capture_logs() as logs:
        stored = receive_file(ctx, src)
        drain(ctx)
    detail = study(db, stored.study_uid)
    assert detail["state"] == StudyState.DONE, detail.get("reason")
    sr = hd.sr.srread(
        ctx.settings.send.outbox_dir / stored.study_uid / f"{detail['runs'][0]['sr_sop_instance_uid']}.dcm"
    )
    assert sr.PatientBirthDate in ("", None) and sr.PatientID == ds.PatientID
    assert "ZQXDOB1923" not in repr(logs)
    (note,) = [e for e in logs if e["event"] == "source_values_emptied"]
    assert note["keywords"] == ["PatientBirthDate"]
