"""Periodic work under APScheduler: readiness sweep, lease reaper, destination probes, retention purge.

Each job is one short transaction that locks the rows it changes (SKIP LOCKED on PostgreSQL, the write lock on
SQLite), so several predictd processes can run the same jobs at once without doing anything twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler

from predictd.daemon import arrivals, health, leases, retention
from predictd.daemon.db import utcnow
from predictd.daemon.log import Event, get_logger
from predictd.daemon.stage import StageContext
from predictd.models.phi import exception_text

log = get_logger("jobs")


def sweep(ctx: StageContext) -> list[str]:
    q = ctx.settings.queue
    ready = arrivals.sweep_ready(
        ctx.db,
        quiet_seconds=q.quiet_seconds,
        by_modality=q.quiet_seconds_by_modality,
        release_grace_seconds=q.release_grace_seconds if q.complete_on_release else None,
    )
    for study_uid in ready:
        log.info(Event.STUDY_READY, study_uid=study_uid)
    return ready


def reap(ctx: StageContext) -> list[str]:
    reaped = leases.reap(ctx.db, policy=ctx.study_policy)
    for study_uid in reaped:
        log.warning(Event.LEASE_EXPIRED, study_uid=study_uid, reason="worker lease expired; study released")
    return reaped


def probe(ctx: StageContext) -> dict[str, int]:
    """Destinations that deliveries wait for: probed, and flushed when they answer (daemon.health)."""
    destinations = {d.name: d for d in ctx.settings.send.destinations}
    flushed = health.probe_and_flush(ctx.db, destinations, ctx.settings.receive.ae_title, ctx.destinations_answered)
    for name, count in flushed.items():
        log.info(Event.DESTINATION_RECOVERED, destination=name, deliveries=count)
    return flushed


def purge(ctx: StageContext) -> int:
    """Delete spool files of studies that ended more than ``spool.retention_days`` ago (rows stay for audit).

    Rows are marked before the files go: a run of the study opened by late images then never counts on a file
    that is about to disappear (at worst it retries once, having read the list just before the mark). A crash
    between the two leaves files on disk that no row points to any more, which costs space, not a study.
    """
    cutoff = utcnow() - timedelta(days=ctx.settings.spool.retention_days)
    removed = 0
    for batch in retention.purgeable(ctx.db, cutoff):
        retention.mark_purged(ctx.db, batch.instance_ids)
        n = ctx.spool.purge(batch.study_uid, batch.instance_paths, batch.run_nos)
        removed += n
        log.info(Event.PURGED, study_uid=batch.study_uid, files=n)
    return removed


def _guarded(name: str, job: Callable[[StageContext], object], ctx: StageContext) -> None:
    try:
        job(ctx)
    except Exception as exc:  # a failed run is logged; the next tick tries again
        log.error(Event.JOB_FAILED, job=name, reason=exception_text(exc))


def sweep_at(scheduler: BackgroundScheduler, ctx: StageContext, when: datetime) -> None:
    """One extra sweep at ``when``: a released study's grace ends between two ticks of the interval sweep."""
    scheduler.add_job(_guarded, "date", run_date=when, args=("sweep", sweep, ctx))


def build_scheduler(ctx: StageContext) -> BackgroundScheduler:
    q = ctx.settings.queue
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
    scheduler.add_job(_guarded, "interval", seconds=q.sweep_seconds, args=("sweep", sweep, ctx), id="sweep")
    scheduler.add_job(_guarded, "interval", seconds=q.sweep_seconds, args=("reap", reap, ctx), id="reap")
    probe_every = ctx.settings.send.probe_seconds
    scheduler.add_job(_guarded, "interval", seconds=probe_every, args=("probe", probe, ctx), id="probe")
    scheduler.add_job(
        _guarded,
        "interval",
        hours=q.purge_hours,
        args=("purge", purge, ctx),
        id="purge",
        next_run_time=utcnow() + timedelta(seconds=30),
    )
    return scheduler
