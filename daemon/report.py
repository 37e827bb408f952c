"""Stage 5: predictions → reporting.text + reporting.sr → a document in the spool and one outbox row per destination.

The SR's SOP Instance UID comes from the study, the run and the model versions, so rebuilding it after a crash
gives the same UID and a PACS can never hold two different SRs for one run. With ``report.key_images`` on, each
decided finding also gets a key image (the Grad-CAM overlay classify drew, as a Secondary Capture,
reporting.key_images), whose UID derives from the SR's; the SR references them, and they are queued before it.
A study reported again (late images opened a new run) names the earlier run's SR as its predecessor. A study no
model applied to (classify kept the reason, ``report.send_not_assessed``) gets a short "not assessed" SR and text
naming the models considered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from predictd.daemon import outbox, records
from predictd.daemon.config_send import Hl7Destination
from predictd.daemon.db import utcnow
from predictd.daemon.lifecycle import StudyState
from predictd.daemon.log import Event, get_logger
from predictd.daemon.queue import Claim
from predictd.daemon.spool import durable_write
from predictd.daemon.stage import Advance, Outcome, StageContext, StageError
from predictd.models.card import ModelCard
from predictd.models.phi import exception_text
from predictd.reporting import uids
from predictd.reporting.hl7 import message_control_id, oru_r01
from predictd.reporting.key_images import KEY_IMAGE_SERIES_NUMBER, build_key_image
from predictd.reporting.sr import build_sr, unusable_dates
from predictd.reporting.text import not_assessed_text, report_text

SR_SERIES_NUMBER = 9901

log = get_logger("report")


def _hl7_messages(
    ctx: StageContext, view: records.RunView, header: pydicom.Dataset, text: str, sr_uid: str
) -> list[outbox.Document]:
    """One ORU^R01 per HL7 destination (its MSH-5/6 differ), written once so every retry sends the same bytes.

    The control id derives from the SR's UID and the destination, and the message time is the run's classification
    time, so rebuilding after a crash writes the same message again.
    """
    documents = []
    for dest in ctx.settings.send.destinations:
        if not isinstance(dest, Hl7Destination):
            continue
        uid = uids.derived_uid("hl7-message", sr_uid, dest.name)
        message = oru_r01(
            header,
            text,
            message_control_id=message_control_id(uid),
            now=view.classified_at or utcnow(),
            sending_application=dest.sending_application,
            sending_facility=dest.sending_facility,
            receiving_application=dest.receiving_application,
            receiving_facility=dest.receiving_facility,
            sr_sop_instance_uid=sr_uid,
        )
        path = ctx.spool.document_path(view.study_uid, view.run_no, uid).with_suffix(".hl7")
        durable_write(path, message.encode("utf-8"))
        documents.append(outbox.Document(outbox.DocumentKind.HL7, uid, path, destination=dest.name))
    return documents


def _run_cards(ctx: StageContext, view: records.RunView) -> dict[str, ModelCard]:
    """The cards the run was classified with (kept on the run); the engine's only for runs from before they were."""
    if view.cards is not None:
        return view.cards
    if ctx.engine is None:
        raise StageError("no model is installed: model cards are needed to word the report")
    cards = {card.name: card for card in ctx.engine.cards}
    missing = sorted({p.model_name for p in view.predictions} - cards.keys())
    if missing:
        raise StageError(f"model(s) no longer installed: {', '.join(missing)}", permanent=True)
    return cards


def run(ctx: StageContext, claim: Claim) -> Outcome:
    view = records.load_run(ctx.db, claim.study_id, claim.run_no)
    cards = _run_cards(ctx, view)
    try:
        sources = [pydicom.dcmread(inst.path, stop_before_pixels=True) for inst in view.instances]
    except FileNotFoundError as exc:
        raise StageError(f"spool file missing: {exc.filename}") from exc
    emptied = sorted({keyword for src in sources for keyword in unusable_dates(src)})
    if emptied:  # the SR's copy of the header leaves them empty; the keywords only, never the values
        log.warning(Event.SOURCE_VALUES_EMPTIED, study_uid=view.study_uid, run_no=view.run_no, keywords=emptied)
    try:
        if view.not_assessed_reason is not None:
            considered = [card for card in cards.values() if card.role != "router"]
            text = not_assessed_text(view.not_assessed_reason, considered)
        else:
            text = report_text(view.predictions, cards, ctx.settings.report.templates)
    except ValueError as exc:
        raise StageError(f"report text: {exception_text(exc)}", permanent=True) from exc
    sr_uid = uids.sr_instance_uid(view.study_uid, view.run_no, view.model_versions or "")
    try:
        documents, path = _documents(ctx, view, cards, sources, text, sr_uid)
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        # The same inputs fail the same way every time: a retry would only delay the failure (and the reason).
        raise StageError(f"cannot build the documents: {exception_text(exc, sources)}", permanent=True) from exc
    records.save_report(
        ctx.db,
        claim,
        sr_sop_instance_uid=sr_uid,
        sr_path=path,
        report_text=text,
        deliveries=outbox.routed(ctx.settings.send.destinations, documents),
    )
    log.info(
        Event.SR_BUILT,
        study_uid=claim.study_uid,
        run_no=claim.run_no,
        sr_sop_instance_uid=sr_uid,
        key_images=sum(doc.kind == outbox.DocumentKind.KEY_IMAGE for doc in documents),
    )
    return Advance(StudyState.REPORTED)


def _documents(
    ctx: StageContext,
    view: records.RunView,
    cards: Mapping[str, ModelCard],
    sources: Sequence[pydicom.Dataset],
    text: str,
    sr_uid: str,
) -> tuple[list[outbox.Document], Path]:
    """Key images, the SR and the HL7 messages of one run, written to the spool; the SR's path."""
    settings = ctx.settings.report
    key_images = _key_images(ctx, view, cards, sources, sr_uid) if settings.key_images else {}
    documents = [
        outbox.Document(
            outbox.DocumentKind.KEY_IMAGE,
            str(sc.SOPInstanceUID),
            ctx.spool.write_dataset(sc, ctx.spool.document_path(view.study_uid, view.run_no, str(sc.SOPInstanceUID))),
        )
        for sc in key_images.values()
    ]
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
        predecessor_sr_uid=view.predecessor_sr_uid,
        key_images=key_images,
        not_assessed_reason=view.not_assessed_reason,
        considered_models=[f"{c.name}@{c.version}" for c in cards.values()] if view.not_assessed_reason else (),
    )
    path = ctx.spool.write_dataset(sr, ctx.spool.document_path(view.study_uid, view.run_no, sr_uid))
    documents.append(outbox.Document(outbox.DocumentKind.SR, sr_uid, path))
    documents += _hl7_messages(ctx, view, sources[0], text, sr_uid)
    return documents, path


def _key_images(
    ctx: StageContext,
    view: records.RunView,
    cards: Mapping[str, ModelCard],
    sources: Sequence[pydicom.Dataset],
    sr_uid: str,
) -> dict[int, pydicom.Dataset]:
    """One key image per decided finding that classify drew an overlay for, keyed by the prediction's index in the
    run (what build_sr expects).

    The overlays were drawn in the classify stage, where the pixels were decoded and the model resident
    (``Engine.classify_files(overlays=True)``); this stage only reads the PNG and wraps it for the PACS, so it
    decodes no radiograph, takes no inference lock and needs no engine. The router's answer is not a finding;
    runs classified with key images off (or before overlays were kept) have none.
    """
    headers = {str(src.SOPInstanceUID): src for src in sources}
    built: dict[int, pydicom.Dataset] = {}
    for index, p in enumerate(view.predictions):
        path = ctx.spool.overlay_path(view.study_uid, view.run_no, index)
        if not p.is_decided or cards[p.model_name].role == "router" or not path.is_file():
            continue
        with Image.open(path) as png:
            overlay = np.asarray(png.convert("RGB"), dtype=np.uint8)
        built[index] = build_key_image(
            headers[p.sop_instance_uid],
            p,
            cards[p.model_name],
            overlay,
            sr_uid=sr_uid,
            instance_number=len(built) + 1,
            series_number=KEY_IMAGE_SERIES_NUMBER,
            manufacturer=ctx.settings.report.manufacturer,
            institution_name=ctx.settings.report.institution_name,
        )
    return built
