"""The contract every stage (classify, report, send) implements: ``run(ctx, claim) -> Outcome``.

A stage never writes a study's state itself: it returns what should happen (advance, or wait) or raises
:class:`StageError`, and the worker applies that through the queue. That keeps the state machine in one place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from predictd.daemon.audit import Auditor
from predictd.daemon.config import Settings
from predictd.daemon.db import Database
from predictd.daemon.lifecycle import StudyState
from predictd.daemon.queue import Claim, RetryPolicy
from predictd.daemon.spool import Spool

if TYPE_CHECKING:
    from predictd.models.inference import Engine


@dataclass(frozen=True)
class Advance:
    """The stage completed: move the study to ``to`` (a reason is kept for skipped/failed ends)."""

    to: StudyState
    reason: str | None = None


@dataclass(frozen=True)
class Defer:
    """Nothing failed, but the stage is not finished (deliveries waiting for their retry time)."""

    until: datetime


Outcome = Advance | Defer


class StageError(RuntimeError):
    """A stage could not complete. ``permanent`` errors (undecodable pixels …) end the study ``failed`` at once."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


@dataclass
class StageContext:
    """What stages need, built once by the composition root (daemon.app) and shared by all workers."""

    settings: Settings
    db: Database
    spool: Spool
    engine: Engine | None
    """None when no model is installed: classification then waits, everything else still runs."""
    inference_lock: threading.Lock = field(default_factory=threading.Lock)
    """One forward pass at a time: the model is resident once and batches already fill the device."""
    destinations_answered: dict[str, bool] = field(default_factory=dict)
    """Each destination's last health probe (daemon.health): a queue is flushed when its destination answers again."""
    audit_with: InitVar[Auditor | None] = None
    auditor: Auditor = field(init=False)
    """Where documents sent are audited: ``audit_with`` (the daemon's, with its syslog copy) or one on ``db``."""

    def __post_init__(self, audit_with: Auditor | None) -> None:
        self.auditor = audit_with or Auditor(self.db)

    @property
    def study_policy(self) -> RetryPolicy:
        q = self.settings.queue
        return RetryPolicy(q.max_attempts, q.backoff_base_seconds, q.backoff_cap_seconds)

    @property
    def send_policy(self) -> RetryPolicy:
        sd = self.settings.send
        return RetryPolicy(sd.max_attempts, sd.backoff_base_seconds, sd.backoff_cap_seconds)


StageFunction = Callable[[StageContext, Claim], Outcome]
BatchStageFunction = Callable[[StageContext, Sequence[Claim]], list["Outcome | Exception"]]


@dataclass(frozen=True)
class Stage:
    """One row of the pipeline table (``daemon.worker.PIPELINE``): what moves a study on from a claimable state.

    ``name`` is the one ``lifecycle.WORK`` gives the state; ``run_batch``, where a stage has one, takes several
    claims at once (classify: one forward batch across studies).
    """

    name: str
    run: StageFunction
    run_batch: BatchStageFunction | None = None


def captured(fn: Callable[[], Outcome]) -> Outcome | Exception:
    """The outcome of ``fn()``, or the exception it raised: each study of a batch gets its own result."""
    try:
        return fn()
    except Exception as exc:
        return exc
