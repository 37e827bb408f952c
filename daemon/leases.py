"""Claims whose holder is gone: the reaper (lease expired) and, at start-up, claims of dead processes of this host.

A claim's owner is ``host:pid/wN`` (daemon.worker.default_worker_name). After a crash the restarted daemon finds the
claims of its predecessor: waiting out their lease (120 s by default) would hold those studies, and everything batched
with them, for nothing, so a claim whose process is gone is released at once. Claims of other hosts, of live
processes and of owners named by ``workers.name`` (no pid to check) are left to the lease. Either way the lost attempt
counts, so a study that keeps killing its worker ends ``failed`` instead of looping.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select

from predictd.daemon import lifecycle
from predictd.daemon.db import Database, utcnow
from predictd.daemon.queue import RetryPolicy, count_failure
from predictd.daemon.tables import Study


def reap(db: Database, *, policy: RetryPolicy, now: datetime | None = None) -> list[str]:
    """Free studies whose lease expired (their worker died or hung); each counts as a failed attempt."""
    now = now or utcnow()
    reaped: list[str] = []
    with db.transaction() as s:
        expired = s.scalars(
            db.locking(select(Study).where(Study.claimed_by.is_not(None), Study.lease_until < now))
        ).all()
        for study in expired:
            worker = study.claimed_by or "?"
            lifecycle.reap(s, study, now=now)
            count_failure(s, study, f"lease of {worker} expired", policy, False, now, actor="reaper")
            reaped.append(study.study_uid)
    return reaped


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _dead_owner(owner: str, host: str, alive: Callable[[int], bool]) -> bool:
    """Whether ``owner`` (host:pid/wN) is a process of ``host`` that no longer runs. This process is just starting,
    so a claim under its own pid (a container restarted with the same pid) is a predecessor's too."""
    claimer = owner.split("/", 1)[0]
    claim_host, _, pid = claimer.rpartition(":")
    if claim_host != host or not pid.isdigit():
        return False
    return int(pid) == os.getpid() or not alive(int(pid))


def release_orphans(
    db: Database,
    *,
    policy: RetryPolicy,
    host: str | None = None,
    alive: Callable[[int], bool] = pid_alive,
    now: datetime | None = None,
) -> list[str]:
    """At start-up, before this process claims anything: free the claims of dead processes of this host now."""
    now = now or utcnow()
    host = host or socket.gethostname()
    released: list[str] = []
    with db.transaction() as s:
        claimed = s.scalars(db.locking(select(Study).where(Study.claimed_by.is_not(None)))).all()
        for study in claimed:
            owner = study.claimed_by or ""
            if not _dead_owner(owner, host, alive):
                continue
            reason = f"claim of {owner} released at start-up: that process is gone"
            lifecycle.release(s, study, reason, now=now)
            count_failure(s, study, reason, policy, False, now, actor="startup")
            released.append(study.study_uid)
    return released
