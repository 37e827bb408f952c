"""Stage 6: the outbox → destinations, each with its own retries, so one unreachable PACS never blocks another.

A study is done when every delivery of its run is sent. While some wait for their retry time the study is deferred
(not failed); when one gives up (``send.give_up_after_hours`` after it was queued, or a permanent error) the study
ends ``failed`` with the destinations and errors named. daemon.health sends a waiting destination's queue at once
when it answers again.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from predictd.daemon import outbox, records
from predictd.daemon.config import Destination, DicomDestination, StowDestination
from predictd.daemon.db import utcnow
from predictd.daemon.dimse import SendError, store_file
from predictd.daemon.lifecycle import StudyState
from predictd.daemon.log import Event, get_logger
from predictd.daemon.mllp import send_hl7
from predictd.daemon.queue import Claim
from predictd.daemon.spool import durable_copy, durable_write
from predictd.daemon.stage import Advance, Defer, Outcome, StageContext, StageError
from predictd.daemon.stow import stow_file

log = get_logger("send")


def run(ctx: StageContext, claim: Claim) -> Outcome:
    view = records.load_run(ctx.db, claim.study_id, claim.run_no)
    now = utcnow()
    for delivery in outbox.deliveries(ctx.db, view.run_id):
        if delivery.state != outbox.PENDING:
            continue
        if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
            continue
        try:
            _deliver(ctx, view, delivery)
        except SendError as exc:
            state = outbox.mark_attempt_failed(
                ctx.db,
                claim,
                delivery.id,
                str(exc),
                policy=ctx.send_policy,
                permanent=not exc.retryable,
                give_up_after=timedelta(hours=ctx.settings.send.give_up_after_hours),
            )
            log.warning(
                Event.SEND_FAILED,
                study_uid=claim.study_uid,
                run_no=claim.run_no,
                destination=delivery.destination,
                attempt=delivery.attempts + 1,
                delivery_state=state,
                reason=str(exc),
            )
            continue
        outbox.mark_sent(ctx.db, claim, delivery.id)
        log.info(
            Event.SR_SENT,
            study_uid=claim.study_uid,
            run_no=claim.run_no,
            destination=delivery.destination,
            kind=delivery.kind,
            sr_sop_instance_uid=delivery.sop_instance_uid,
        )
    summary = outbox.summarize(outbox.deliveries(ctx.db, view.run_id), utcnow())
    if summary.pending == 0 and not summary.failed:
        return Advance(StudyState.DONE)
    if summary.pending == 0:
        failed = "; ".join(f"{d.destination}: {d.last_error}" for d in summary.failed)
        raise StageError(f"delivery failed after retries ({failed})", permanent=True)
    return Defer(summary.next_attempt_at or utcnow())


def _deliver(ctx: StageContext, view: records.RunView, delivery: outbox.DeliveryView) -> None:
    if delivery.destination == outbox.OUTBOX_FOLDER:
        _to_folder(ctx.settings.send.outbox_dir, view, delivery)
        return
    dest = _destination(ctx, delivery.destination)
    if isinstance(dest, DicomDestination):
        store_file(delivery.path, dest, dest.calling_ae_title or ctx.settings.receive.ae_title)
    elif isinstance(dest, StowDestination):
        stow_file(delivery.path, dest)
    else:
        send_hl7(_read_message(delivery.path), dest)


def _read_message(path: Path) -> str:
    """The HL7 message exactly as the report stage wrote it, so a retry sends the same bytes.

    Read as bytes: text mode would turn HL7's carriage-return segment separators into newlines.
    """
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise SendError(f"HL7 message file unreadable: {exc.strerror or exc}", retryable=False) from exc


def _destination(ctx: StageContext, name: str) -> Destination:
    for dest in ctx.settings.send.destinations:
        if dest.name == name:
            return dest
    raise SendError(f"destination {name!r} is no longer configured", retryable=False)


def _to_folder(root: Path, view: records.RunView, delivery: outbox.DeliveryView) -> None:
    """The SR and its report text side by side (and any key images), one folder per study, written durably."""
    folder = root / view.study_uid
    try:
        durable_copy(delivery.path, folder / f"{delivery.sop_instance_uid}.dcm")
        if delivery.kind == outbox.SR:
            durable_write(folder / f"{delivery.sop_instance_uid}.txt", (view.report_text or "").encode() + b"\n")
    except OSError as exc:
        raise SendError(f"cannot write to the outbox folder {root}: {exc}", retryable=True) from exc
