"""Stage 1, the receiver: a pynetdicom Storage SCP (C-ECHO, C-STORE) that puts instances in the spool and the queue.

The C-STORE handler stays thin: look at the header (never the pixels), write the bytes durably into the spool, record
the row, answer. Success (0x0000) therefore means "on disk and in the database", which is what allows a modality or
PACS to forget the image. Decoding, classification and everything slow happen later in worker threads; an image whose
pixels cannot be decoded is still accepted here and fails its study in the classify stage.

C-STORE statuses answered:

======  ===================================================================================================
0x0000  stored and recorded; also for a repeated SOP Instance UID (idempotent), for predictd's own key images sent
        back by a PACS (discarded, see ``dataset_check.Header.made_by_predictd``), for SRs and presentation states
        (discarded, see ``RESULT_SOP_CLASSES``) and, with
        ``unsupported_sop_classes = "ignore"``, for a SOP class predictd does not read (discarded)
0xA700  out of resources: the spool has less than ``min_free_bytes`` free; nothing written
0xA900  data set does not match SOP class: a required UID (study, series, SOP instance) is missing or not usable
        as a file name, the data set's SOP Class/Instance UID differs from the C-STORE request's, or the image
        has no Pixel Data
0xC210  cannot understand: the data set cannot be parsed, or it is truncated (Pixel Data runs past the end)
0x0110  processing failure: an unexpected error (database down, disk error ...); logged, the server keeps serving.
        Not 0xC2xx ("cannot understand"), which tells the sender its data set is at fault and not worth resending
======  ===================================================================================================

The header check is :func:`predictd.daemon.dataset_check.read_header`: its ``Unreadable`` problems are answered
0xC210, its ``Unusable`` ones 0xA900. Every failure carries a fixed Error Comment (:data:`ERROR_COMMENTS`), so the
modality's log says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pydicom
from pydicom.uid import AllTransferSyntaxes, DeflatedExplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE

from predictd.daemon import audit, incoming, metrics
from predictd.daemon.audit import Auditor
from predictd.daemon.completion import AssociationTracker
from predictd.daemon.dataset_check import Unreadable, Unusable, read_header
from predictd.daemon.log import Event, get_logger
from predictd.daemon.spool import Spool
from predictd.models.phi import exception_text

log = get_logger("receive")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC210
UNEXPECTED_ERROR = 0x0110

VERIFICATION = "1.2.840.10008.1.1"

IMAGE_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
)
"""The SOP classes predictd stores and classifies: projection radiographs (and screenshots of them)."""

RESULT_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR (what predictd sends)
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
)
"""Reports and presentation states, ours or a reader's: accepted even under ``unsupported_sop_classes = "refuse"`` and
discarded with success, because a PACS forwarding whole studies sends them along (predictd's own SR among them) and a
refused context would count as a failed forward there. Never classified, never stored."""


def accepted_transfer_syntaxes() -> list[str]:
    """Every transfer syntax pydicom can decode with the plugins installed here, uncompressed ones first.

    Offering a compressed syntax without a decoder would only move the failure from the sender to classify; a
    sender whose syntax we leave out decompresses (or picks another) instead.
    """
    native = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", str(DeflatedExplicitVRLittleEndian)]
    compressed: list[str] = []
    for uid in AllTransferSyntaxes:
        if uid in native or not uid.is_compressed:
            continue
        try:
            available = pydicom.pixels.get_decoder(uid).is_available
        except NotImplementedError:
            available = False
        if available:
            compressed.append(str(uid))
    return native + compressed


@dataclass(frozen=True)
class StoredInstance:
    """One instance safely in the spool; satisfies ``daemon.arrivals.IncomingInstance``."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    path: Path
    size_bytes: int
    calling_ae: str | None
    patient_id: str | None = None
    accession_number: str | None = None
    study_date: str | None = None


Record = Callable[[StoredInstance], bool]
"""Records a stored instance in the database; True if new, False for a repeated SOP Instance UID."""

SenderDone = Callable[[list[str], str], None]
"""Told the studies a released association completed (daemon.completion) and the calling AE title."""


@dataclass(frozen=True)
class StoreContext:
    """What the C-STORE handler needs, passed in through ``evt_handlers`` (no globals)."""

    spool: Spool
    record: Record
    min_free_bytes: int
    image_sop_classes: frozenset[str] = field(default_factory=lambda: frozenset(IMAGE_SOP_CLASSES))
    tracker: AssociationTracker | None = None
    """Which open associations brought which studies; None when nobody listens for releases."""
    auditor: Auditor | None = None
    """Where refused and discarded instances are audited (stored ones are audited with their row, by ``record``)."""

    def audit_discarded(self, calling: str, sop_class: str, sop_instance: str, reason: str) -> None:
        if self.auditor is not None:
            self.auditor.record(audit.instance_discarded(calling, sop_class, sop_instance, reason))

    def audit_refused(self, calling: str, sop_class: str, sop_instance: str, status: int, reason: str) -> None:
        if self.auditor is not None:
            self.auditor.record(audit.instance_refused(calling, sop_class, sop_instance, status, reason))


ERROR_COMMENTS = {
    OUT_OF_RESOURCES: "predictd: spool below its free-space watermark",
    DOES_NOT_MATCH_SOP_CLASS: "predictd: a required UID or Pixel Data is missing or unusable",
    CANNOT_UNDERSTAND: "predictd: the data set cannot be parsed or is truncated",
    UNEXPECTED_ERROR: "predictd: unexpected error, see its log",
}
"""Error Comment (0000,0902) of each failure status: fixed texts (LO, at most 64 characters) so that the sender's log
says why, and never a value from the data set (no PHI can reach another system's log)."""


def failure(status: int) -> pydicom.Dataset:
    """The C-STORE response status with its Error Comment."""
    response = pydicom.Dataset()
    response.Status = status
    response.ErrorComment = ERROR_COMMENTS[status]
    return response


class Rejected(Exception):
    """An instance the receiver answers with a failure status; ``reason`` is logged (UIDs only, no PHI)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --- event handlers (run in pynetdicom's association threads) -------------------------------------------------------


def handle_released(event: evt.Event, tracker: AssociationTracker, sender_done: SenderDone) -> None:
    """A normal release: the studies no other open association brought are complete (the queue is told)."""
    studies = tracker.released(id(event.assoc))
    if not studies:
        return
    try:
        sender_done(studies, event.assoc.requestor.ae_title)
    except Exception as exc:  # the quiet window still makes them ready; a release must never break the server
        log.error(Event.JOB_FAILED, job="sender_done", reason=exception_text(exc), studies=len(studies))


def handle_closed(event: evt.Event, tracker: AssociationTracker) -> None:
    tracker.closed(id(event.assoc))


def handle_echo(event: evt.Event) -> int:
    log.info(Event.ECHO_RECEIVED, calling_ae=event.assoc.requestor.ae_title)
    return SUCCESS


def handle_store(event: evt.Event, ctx: StoreContext) -> int | pydicom.Dataset:
    """Store one instance durably and record it; see the module docstring for the statuses."""
    req = cast(C_STORE, event.request)
    sop_class = str(req.AffectedSOPClassUID)
    sop_instance = str(req.AffectedSOPInstanceUID)
    calling = event.assoc.requestor.ae_title
    try:
        if sop_class not in ctx.image_sop_classes:
            log.info(Event.INSTANCE_IGNORED, sop_class_uid=sop_class, sop_instance_uid=sop_instance, calling_ae=calling)
            ctx.audit_discarded(calling, sop_class, sop_instance, "a SOP class predictd does not classify")
            metrics.INSTANCES.labels("discarded", "0x0000").inc()
            return SUCCESS
        free = ctx.spool.free_bytes()
        if free < ctx.min_free_bytes:
            raise Rejected(
                OUT_OF_RESOURCES, f"spool has {free} bytes free, less than receive.min_free_bytes {ctx.min_free_bytes}"
            )
        with incoming.received(event) as (fh, source):
            try:
                header = read_header(fh, sop_class, sop_instance)
            except Unreadable as exc:
                raise Rejected(CANNOT_UNDERSTAND, exc.reason) from exc
            except Unusable as exc:
                raise Rejected(DOES_NOT_MATCH_SOP_CLASS, exc.reason) from exc
            if header.made_by_predictd:
                reason = "predictd's own output (its device UID), forwarded back"
                log.info(
                    Event.INSTANCE_IGNORED,
                    reason=reason,
                    sop_class_uid=sop_class,
                    sop_instance_uid=sop_instance,
                    calling_ae=calling,
                )
                ctx.audit_discarded(calling, sop_class, sop_instance, reason)
                metrics.INSTANCES.labels("discarded", "0x0000").inc()
                return SUCCESS
            uids = (header.study_uid, header.series_uid, header.sop_instance_uid)
            if isinstance(source, bytes):
                path, size = ctx.spool.write_instance(*uids, source)
            else:
                path, size = ctx.spool.adopt_instance(*uids, source)
        stored = StoredInstance(
            study_uid=header.study_uid,
            series_uid=header.series_uid,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=sop_class,
            transfer_syntax_uid=header.transfer_syntax_uid,
            modality=header.modality,
            path=path,
            size_bytes=size,
            calling_ae=calling,
            patient_id=header.patient_id,
            accession_number=header.accession_number,
            study_date=header.study_date,
        )
        is_new = ctx.record(stored)
        if ctx.tracker is not None:
            ctx.tracker.arrived(id(event.assoc), stored.study_uid)
    except Rejected as exc:
        log.warning(
            Event.INSTANCE_REJECTED,
            status=f"0x{exc.status:04X}",
            reason=exc.reason,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            calling_ae=calling,
        )
        ctx.audit_refused(calling, sop_class, sop_instance, exc.status, exc.reason)
        metrics.INSTANCES.labels("refused", f"0x{exc.status:04X}").inc()
        return failure(exc.status)
    except Exception as exc:
        log.error(
            Event.INSTANCE_REJECTED,
            status=f"0x{UNEXPECTED_ERROR:04X}",
            reason=f"unexpected {exception_text(exc)}",
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            calling_ae=calling,
        )
        ctx.audit_refused(calling, sop_class, sop_instance, UNEXPECTED_ERROR, f"unexpected {exception_text(exc)}")
        metrics.INSTANCES.labels("error", f"0x{UNEXPECTED_ERROR:04X}").inc()
        return failure(UNEXPECTED_ERROR)
    log.info(
        Event.INSTANCE_STORED if is_new else Event.INSTANCE_DUPLICATE,
        study_uid=stored.study_uid,
        series_uid=stored.series_uid,
        sop_instance_uid=stored.sop_instance_uid,
        transfer_syntax_uid=stored.transfer_syntax_uid,
        size_bytes=size,
        calling_ae=calling,
    )
    metrics.INSTANCES.labels("stored" if is_new else "repeat", "0x0000").inc()
    return SUCCESS
