"""The whole pipeline to the other ways results leave predictd: HL7 ORU over MLLP and DICOMweb STOW-RS.

Real listeners on free ports (python-hl7's MLLP server, an http.server STOW endpoint), the real report and send
stages through the worker, real SQLite and PostgreSQL. Orthanc as a STOW-RS peer is in tests/e2e.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest

from predictd.daemon import outbox, views
from predictd.daemon.db import Database
from predictd.daemon.lifecycle import StudyState
from predictd.daemon.stage import StageContext
from tests.integration.pipeline_helpers import context, copy_as_new_study, drain, receive_file
from tests.integration.test_mllp import Answer, MllpListener, ack
from tests.integration.test_stow_http import StowServer, serving
from tests.support import CR_JLSL, wait_until


@pytest.fixture
def stow() -> Iterator[StowServer]:
    with serving() as server:  # 200 with an empty body: stored
        yield server


@pytest.fixture
def mllp() -> Iterator[list[MllpListener]]:
    started: list[MllpListener] = []
    yield started
    for listener in started:
        listener.stop()


def _listen(started: list[MllpListener], answer: Answer) -> MllpListener:
    listener = MllpListener(answer).start()
    started.append(listener)
    return listener


def _hl7(port: int, **fields: Any) -> dict[str, Any]:
    return {"type": "hl7", "name": "dictation", "host": "127.0.0.1", "port": port, "timeout_seconds": 5, **fields}


def _state(ctx: StageContext, study_uid: str) -> str:
    detail = views.study_detail(ctx.db, study_uid)
    assert detail is not None
    return str(detail["state"])


def _done(ctx: StageContext, study_uid: str) -> bool:
    drain(ctx)
    return _state(ctx, study_uid) == StudyState.DONE


def test_hl7_and_stow_destinations_get_their_documents(
    db: Database, tmp_path: Path, stow: StowServer, mllp: list[MllpListener]
) -> None:
    listener = _listen(mllp, ack("AA"))
    destinations = [
        _hl7(listener.port, receiving_application="DICTATION", receiving_facility="RAD"),
        {"type": "stow", "name": "web", "url": stow.url},
    ]
    ctx = context(tmp_path, db, send={"destinations": destinations})
    stored = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
    wait_until(lambda: _done(ctx, stored.study_uid), timeout=60, what="the study to be delivered")

    detail = views.study_detail(db, stored.study_uid)
    assert detail is not None
    (run,) = detail["runs"]
    rows = sorted((d["destination"], d["kind"], d["state"]) for d in run["deliveries"])
    assert rows == [
        ("dictation", outbox.DocumentKind.HL7, outbox.DeliveryState.SENT),
        ("web", outbox.DocumentKind.SR, outbox.DeliveryState.SENT),
    ]
    sr_uid, text = run["sr_sop_instance_uid"], run["report_text"]

    (message,) = listener.received
    assert "\n" not in message  # HL7 separates segments with carriage returns only
    parsed = hl7.parse(message)
    assert str(parsed.segment("MSH")(9)) == "ORU^R01^ORU_R01"
    assert str(parsed.segment("MSH")(5)) == "DICTATION" and str(parsed.segment("MSH")(6)) == "RAD"
    texts = [parsed.unescape(str(obx(5))) for obx in parsed.segments("OBX") if str(obx(2)) == "TX"]
    assert texts == text.splitlines()
    assert sr_uid in message

    (post,) = stow.received
    assert post.path == "/dicom-web/studies"
    sr_path = ctx.spool.document_path(stored.study_uid, run["run_no"], sr_uid)
    assert sr_path.read_bytes() in post.body  # the SR, byte for byte


def test_an_hl7_error_is_retried_with_the_same_message(db: Database, tmp_path: Path, mllp: list[MllpListener]) -> None:
    answers = iter([ack("AE", text="dictation database busy"), ack("AA")])

    async def first_busy_then_accept(message: str, writer: hl7.mllp.HL7StreamWriter) -> None:
        await next(answers)(message, writer)

    listener = _listen(mllp, first_busy_then_accept)
    ctx = context(tmp_path, db, send={"destinations": [_hl7(listener.port)]})
    stored = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))
    wait_until(lambda: _done(ctx, stored.study_uid), timeout=60, what="the retried HL7 delivery")

    first, second = listener.received
    assert first == second  # the message written once at report time, so MSH-10 and MSH-7 stay the same


def test_an_hl7_reject_fails_the_study_with_the_reason(db: Database, tmp_path: Path, mllp: list[MllpListener]) -> None:
    listener = _listen(mllp, ack("AR", text="unsupported message"))
    ctx = context(tmp_path, db, send={"destinations": [_hl7(listener.port)]})
    stored = receive_file(ctx, copy_as_new_study(CR_JLSL, tmp_path / "hip.dcm"))

    def failed() -> bool:
        drain(ctx)
        return _state(ctx, stored.study_uid) == StudyState.FAILED

    wait_until(failed, timeout=60, what="the study to fail")
    detail = views.study_detail(db, stored.study_uid)
    assert detail is not None and "dictation" in str(detail["reason"]) and "AR" in str(detail["reason"])
    assert len(listener.received) == 1  # a reject is not retried
