"""The pipeline table (state → :class:`~daemon.stage.Stage`) and the claim loop that drives it.

A worker thread claims one study at a time, heartbeats while its stage runs, and applies the stage's outcome
through the queue. Stopping is graceful: a worker finishes (or abandons, under lease) the study in hand.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Mapping
from functools import partial

from predictd.daemon import classify, metrics, queue, report, send
from predictd.daemon.db import utcnow
from predictd.daemon.lifecycle import StudyState
from predictd.daemon.log import Event, get_logger
from predictd.daemon.stage import Advance, Outcome, Stage, StageContext, StageError, captured
from predictd.models.phi import exception_text

PIPELINE: Mapping[StudyState, Stage] = {
    StudyState.READY: Stage("classify", classify.run, classify.run_batch),
    StudyState.CLASSIFIED: Stage("report", report.run),
    StudyState.REPORTED: Stage("send", send.run),
}
"""Which stage moves a study on from each claimable state; the names are ``lifecycle.WORK``'s (a test holds them
equal: lifecycle cannot import the stages, which import the queue)."""

log = get_logger("worker")


def default_worker_name(prefix: str | None = None) -> str:
    return prefix or f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Extends a claim's lease every ``queue.heartbeat_seconds`` on its own thread while a stage runs.

    A beat that finds the claim gone stops beating. The stage is not interrupted: its result is refused at its first
    write under the claim (``queue.held`` raises ``LeaseLost``, logged as ``lease_expired``).
    """

    def __init__(self, ctx: StageContext, claim: queue.Claim) -> None:
        self._ctx, self._claim = ctx, claim
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{claim.worker}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        q = self._ctx.settings.queue
        while not self._stop.wait(q.heartbeat_seconds):
            try:
                queue.heartbeat(self._ctx.db, self._claim, lease_seconds=q.lease_seconds)
            except queue.LeaseLost:  # nothing left to extend; the stage's result is dropped when it is written
                return
            except Exception as exc:  # a database hiccup: the next beat tries again before the lease ends
                log.warning(
                    Event.JOB_FAILED, job="heartbeat", study_uid=self._claim.study_uid, reason=exception_text(exc)
                )


class Worker:
    """One claim loop on one thread."""

    def __init__(
        self,
        ctx: StageContext,
        name: str,
        pipeline: Mapping[StudyState, Stage] = PIPELINE,
    ) -> None:
        self.ctx, self.name, self.pipeline = ctx, name, dict(pipeline)
        if ctx.engine is None:
            # Without a model, ready studies wait (nothing is lost); reports and sends still go out.
            self.pipeline.pop(StudyState.READY, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self.ctx.db.work_available.notify()  # a waiting worker sees the stop now, not at its next poll
        self._thread.join(timeout)

    def _loop(self) -> None:
        poll = self.ctx.settings.workers.poll_seconds
        work = self.ctx.db.work_available
        while not self._stop.is_set():
            seen = work.generation  # before looking: work made available while looking is not missed
            try:
                worked = self.work_once()
            except Exception as exc:  # the loop must survive a database outage
                log.error(Event.JOB_FAILED, job="claim", worker=self.name, reason=exception_text(exc))
                worked = False
            if not worked and not self._stop.is_set():
                work.wait(seen, self._idle_wait(poll))  # woken when a stage or the sweep makes work available

    def _idle_wait(self, poll: float) -> float:
        """Until the next retry or delivery comes due, at most ``poll`` (the safety net)."""
        try:
            due = queue.next_due(self.ctx.db, states=list(self.pipeline))
        except Exception as exc:  # a database outage: wait the poll, the loop logs the next failure
            log.warning(Event.JOB_FAILED, job="next_due", worker=self.name, reason=exception_text(exc))
            return poll
        if due is None:
            return poll
        return max(0.0, min(poll, (due - utcnow()).total_seconds()))

    def work_once(self) -> bool:
        """Claim and process one study (or a batch of ready ones); False when nothing was due."""
        q = self.ctx.settings.queue
        claim = queue.claim(self.ctx.db, self.name, lease_seconds=q.lease_seconds, states=list(self.pipeline))
        if claim is None:
            return False
        stage = self.pipeline[claim.state]
        claims = [claim]
        if stage.run_batch is not None:
            claims += self._more_ready(claim.state, self.ctx.settings.workers.batch_studies - 1)
        for c in claims:
            log.info(
                Event.STUDY_CLAIMED,
                study_uid=c.study_uid,
                run_no=c.run_no,
                stage=c.state,
                worker=self.name,
                attempt=c.attempts + 1,
            )
        with contextlib.ExitStack() as beats, metrics.timed(stage.name):
            for c in claims:
                beats.enter_context(Heartbeat(self.ctx, c))
            if stage.run_batch is None or len(claims) == 1:
                results: list[Outcome | Exception] = [captured(partial(stage.run, self.ctx, claim))]
            else:
                results = stage.run_batch(self.ctx, claims)
        for c, result in zip(claims, results, strict=True):
            self._settle(c, result)
        return True

    def _more_ready(self, state: StudyState, n: int) -> list[queue.Claim]:
        """Up to ``n`` more studies in ``state``, so one batch (one forward pass) spans studies."""
        more: list[queue.Claim] = []
        while len(more) < n:
            c = queue.claim(self.ctx.db, self.name, lease_seconds=self.ctx.settings.queue.lease_seconds, states=[state])
            if c is None:
                break
            more.append(c)
        return more

    def _settle(self, claim: queue.Claim, result: Outcome | Exception) -> None:
        """Apply a stage's outcome, or count its failure; a lost lease means someone else owns the study now."""
        try:
            if isinstance(result, Exception):
                raise result
            self._apply(claim, result)
        except queue.LeaseLost as exc:
            log.warning(Event.LEASE_EXPIRED, study_uid=claim.study_uid, worker=self.name, reason=exception_text(exc))
        except StageError as exc:
            self._fail(claim, exc.reason, permanent=exc.permanent)
        except Exception as exc:
            self._fail(claim, exception_text(exc), permanent=False)

    def _apply(self, claim: queue.Claim, outcome: Outcome) -> None:
        stage = self.pipeline[claim.state].name
        metrics.STAGE_OUTCOMES.labels(stage, "advanced" if isinstance(outcome, Advance) else "deferred").inc()
        if isinstance(outcome, Advance):
            ended = queue.finish(self.ctx.db, claim, outcome.to, reason=outcome.reason)
            event = Event.STUDY_SKIPPED if outcome.to is StudyState.SKIPPED else Event.STATE_CHANGED
            log.info(
                event,
                study_uid=claim.study_uid,
                run_no=claim.run_no,
                from_state=claim.state,
                to_state=ended,
                reason=outcome.reason,
            )
        else:
            queue.defer(self.ctx.db, claim, outcome.until)

    def _fail(self, claim: queue.Claim, reason: str, *, permanent: bool) -> None:
        try:
            state = queue.fail(self.ctx.db, claim, reason, policy=self.ctx.study_policy, permanent=permanent)
        except queue.LeaseLost as exc:
            log.warning(Event.LEASE_EXPIRED, study_uid=claim.study_uid, reason=exception_text(exc))
            return
        event = Event.STAGE_FAILED if state is StudyState.FAILED else Event.STAGE_RETRY_SCHEDULED
        outcome = "failed" if state is StudyState.FAILED else "retry"
        metrics.STAGE_OUTCOMES.labels(self.pipeline[claim.state].name, outcome).inc()
        log.warning(
            event,
            study_uid=claim.study_uid,
            run_no=claim.run_no,
            stage=claim.state,
            attempt=claim.attempts + 1,
            reason=reason,
        )
