"""Stage 5: predictions → reporting.text + reporting.sr → a document in the spool and one outbox row per destination.

The SR's SOP Instance UID comes from the study, the run and the model versions, so rebuilding it after a crash
gives the same UID and a PACS can never hold two different SRs for one run.
"""

from __future__ import annotations

import pydicom

from daemon import records
from daemon.lifecycle import StudyState
from daemon.log import Event, get_logger
from daemon.queue import Claim
from daemon.stage import Advance, Outcome, StageContext, StageError
from reporting import uids
from reporting.sr import build_sr
from reporting.text import report_text

OUTBOX_FOLDER = "outbox-folder"
"""Destination name used when no PACS is configured: documents are written to ``send.outbox_dir``."""

SR_SERIES_NUMBER = 9901

log = get_logger("report")


DICOM_KINDS = frozenset({records.SR, records.KEY_IMAGE})
"""What a DICOM destination (C-STORE or STOW-RS) and the outbox folder receive; an HL7 destination gets the message."""


def routes(ctx: StageContext) -> list[tuple[str, frozenset[str]]]:
    """Each destination's name and the document kinds it receives; the outbox folder when none is configured."""
    configured = [
        (d.name, frozenset({records.HL7}) if d.type == "hl7" else DICOM_KINDS) for d in ctx.settings.send.destinations
    ]
    return configured or [(OUTBOX_FOLDER, DICOM_KINDS)]


def deliveries(ctx: StageContext, documents: list[records.Document]) -> list[tuple[str, records.Document]]:
    """Every (destination, document) pair to queue, key images before the SR that references them."""
    order = {records.KEY_IMAGE: 0, records.SR: 1, records.HL7: 2}
    ordered = sorted(documents, key=lambda doc: order[doc.kind])
    return [(name, doc) for name, kinds in routes(ctx) for doc in ordered if doc.kind in kinds]


def run(ctx: StageContext, claim: Claim) -> Outcome:
    if ctx.engine is None:
        raise StageError("no model is installed: model cards are needed to word the report")
    view = records.load_run(ctx.db, claim.study_id, claim.run_no)
    cards = {card.name: card for card in ctx.engine.cards}
    missing = sorted({p.model_name for p in view.predictions} - cards.keys())
    if missing:
        raise StageError(f"model(s) no longer installed: {', '.join(missing)}", permanent=True)
    try:
        sources = [pydicom.dcmread(inst.path, stop_before_pixels=True) for inst in view.instances]
    except FileNotFoundError as exc:
        raise StageError(f"spool file missing: {exc.filename}") from exc
    text = report_text(view.predictions, cards)
    sr_uid = uids.sr_instance_uid(view.study_uid, view.run_no, view.model_versions or "")
    settings = ctx.settings.report
    sr = build_sr(
        sources,
        view.predictions,
        cards,
        report_text=text,
        sop_instance_uid=sr_uid,
        series_instance_uid=uids.sr_series_uid(view.study_uid),
        series_number=SR_SERIES_NUMBER,
        instance_number=view.run_no,
        manufacturer=settings.manufacturer,
        institution_name=settings.institution_name,
        series_description=settings.series_description,
    )
    path = ctx.spool.write_dataset(sr, ctx.spool.document_path(view.study_uid, view.run_no, sr_uid))
    records.save_report(
        ctx.db,
        claim,
        sr_sop_instance_uid=sr_uid,
        sr_path=path,
        report_text=text,
        deliveries=deliveries(ctx, [records.Document(records.SR, sr_uid, path)]),
    )
    log.info(Event.SR_BUILT, study_uid=claim.study_uid, run_no=claim.run_no, sr_sop_instance_uid=sr_uid)
    return Advance(StudyState.REPORTED)
