"""Stage 6: the outbox → destinations, each with its own retries, so one unreachable PACS never blocks another.

A study is done when every delivery of its run is sent. While some wait for their retry time the study is deferred
(not failed); when one gives up (``send.give_up_after_hours`` after it was queued, or a permanent error) the study
ends ``failed`` with the destinations and errors named. daemon.health sends a waiting destination's queue at once
when it answers again. Each row goes to the handler of its destination's type (:data:`daemon.destinations.HANDLERS`:
C-STORE, STOW-RS, HL7 over MLLP, or the outbox folder when no destination is configured).
"""

from __future__ import annotations

from datetime import timedelta

from predictd.daemon import audit, metrics, outbox, records
from predictd.daemon.config_send import Destination
from predictd.daemon.db import utcnow
from predictd.daemon.destinations import HANDLERS, FolderDestination, Parcel, SendError
from predictd.daemon.lifecycle import StudyState
from predictd.daemon.log import Event, get_logger
from predictd.daemon.queue import Claim
from predictd.daemon.stage import Advance, Defer, Outcome, StageContext, StageError

log = get_logger("send")


def run(ctx: StageContext, claim: Claim) -> Outcome:
    view = records.load_run(ctx.db, claim.study_id, claim.run_no)
    now = utcnow()
    for delivery in outbox.deliveries(ctx.db, view.run_id):
        if delivery.state != outbox.DeliveryState.PENDING:
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
            result = "retry" if state == outbox.DeliveryState.PENDING else "failed"
            metrics.DELIVERY_ATTEMPTS.labels(delivery.destination, result).inc()
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
        # Before the row is marked: a crash in between resends the document, and the trail then says it went twice.
        record = audit.document_sent(
            delivery.destination, claim.study_uid, delivery.sop_instance_uid, str(delivery.kind), claim.run_no
        )
        ctx.auditor.record(record)
        metrics.DELIVERY_ATTEMPTS.labels(delivery.destination, "sent").inc()
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
    """Look the destination's handler up by its type and let it deliver the row's document."""
    dest = _destination(ctx, delivery.destination)
    handler = HANDLERS.get(dest.type)
    if handler is None:  # the handler table's unit test keeps this from happening
        raise SendError(f"no handler for destination type {dest.type!r}", retryable=False)
    is_sr = delivery.kind == outbox.DocumentKind.SR
    parcel = Parcel(
        path=delivery.path,
        sop_instance_uid=delivery.sop_instance_uid,
        study_uid=view.study_uid,
        calling_ae=ctx.settings.receive.ae_title,
        report_text=(view.report_text or "") if is_sr else None,
    )
    handler.send(parcel, dest)


def _destination(ctx: StageContext, name: str) -> Destination | FolderDestination:
    if name == outbox.OUTBOX_FOLDER:
        return FolderDestination(name, ctx.settings.send.outbox_dir)
    for dest in ctx.settings.send.destinations:
        if dest.name == name:
            return dest
    raise SendError(f"destination {name!r} is no longer configured", retryable=False)
