"""The audit trail (IHE ATNA in spirit): who sent what, what was sent where, and who did what, in an append-only table.

A privacy officer asks "who sent us this study, over what, and where did our result go", and "who retried or
cancelled it". Each answer is an :class:`AuditRecord`: when, what kind, success or not, who (the calling AE title
and TLS certificate name, or the OS user of an operator command), from or to where, the study, and details (UIDs,
reasons, hashes). Never a patient's name, ID, birth date or accession number: the records carry what the logs
carry. The database keeps them (``audit_events``, append-only by trigger, migration 0008); with ``[audit.syslog]``
each one is also sent to a collector as RFC 5424 (:mod:`daemon.syslog`), best effort: the table is the record.

An instance's record is written in the same transaction as its row (``daemon.arrivals``), so an acknowledged image
is always audited and the receiver pays no extra commit; the rest are written in a transaction of their own.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import insert, select

from predictd.daemon.db import Database, utcnow
from predictd.daemon.log import Event, get_logger
from predictd.daemon.tables import AuditEvent, table
from predictd.models.phi import exception_text

log = get_logger("audit")


class AuditKind(StrEnum):
    ASSOCIATION = "association"
    """A DICOM association asked for: accepted, or refused and why (TLS handshake, AE title, host, limits)."""
    INSTANCE_RECEIVED = "instance_received"
    """An instance stored (or a repeat of one), or refused with its status."""
    DOCUMENT_SENT = "document_sent"
    """An SR, key image, HL7 message or outbox file delivered to a destination."""
    OPERATOR_ACTION = "operator_action"
    """A command an operator ran that changes something (queue retry/cancel, models install, db upgrade)."""
    CONFIG_LOADED = "config_loaded"
    """A daemon started or reloaded its settings: the file's and the effective settings' hashes."""
    SERVICE = "service"
    """A daemon started or stopped."""


class Outcome(StrEnum):
    SUCCESS = "success"
    REFUSED = "refused"
    """A policy said no (an AE title not allowed, a client certificate not trusted, a status refused)."""
    FAILED = "failed"


@dataclass(frozen=True)
class AuditRecord:
    kind: AuditKind
    actor: str
    outcome: Outcome = Outcome.SUCCESS
    peer: str | None = None
    study_uid: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=utcnow)

    def row(self, source: str) -> dict[str, Any]:
        return {
            "at": self.at,
            "kind": str(self.kind),
            "outcome": str(self.outcome),
            "actor": self.actor[:128],
            "peer": self.peer[:128] if self.peer else None,
            "study_uid": self.study_uid,
            "source": source[:128],
            "detail": self.detail,
        }


class Forwarder(Protocol):
    """Where records go besides the table (daemon.syslog.SyslogSender)."""

    def send(self, record: AuditRecord, source: str) -> None: ...


class Writes(Protocol):
    """A Core connection or an ORM session in the caller's transaction."""

    def execute(self, statement: Any, parameters: Any = ..., /) -> Any: ...


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def os_user() -> str:
    """The operator: the OS account running the command (sudo's caller when run through sudo)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    return f"{sudo} (as {user})" if sudo and sudo != user else user


class Auditor:
    """Writes audit records for one process; built by the composition root (or a CLI command) and passed down."""

    def __init__(self, db: Database, forward: Forwarder | None = None, source: str | None = None) -> None:
        self.db = db
        self.forwarder = forward
        self.source = source or process_name()

    def record(self, rec: AuditRecord) -> None:
        """In a transaction of its own, then forwarded. A failure is logged, never raised: an audit hiccup must not
        fail a C-STORE or a delivery that already happened (the log line keeps the event)."""
        try:
            with self.db.connection() as conn:
                conn.execute(_INSERT, rec.row(self.source))
        except Exception as exc:
            log.error(Event.JOB_FAILED, job="audit", kind=str(rec.kind), reason=exception_text(exc))
            return
        self.forward(rec)

    def insert(self, writes: Writes, rec: AuditRecord) -> None:
        """Into the caller's transaction (an instance's record beside its row); call :meth:`forward` after commit."""
        writes.execute(_INSERT, rec.row(self.source))

    def forward(self, rec: AuditRecord) -> None:
        if self.forwarder is not None:
            self.forwarder.send(rec, self.source)


_INSERT = insert(table(AuditEvent))


# --- the records --------------------------------------------------------------------------------------------------


def association(
    calling_ae: str, address: str, *, transport: str, accepted: bool, reason: str | None = None, tls_peer: str | None
) -> AuditRecord:
    detail: dict[str, Any] = {"transport": transport}
    if tls_peer:
        detail["tls_peer"] = tls_peer
    if reason:
        detail["reason"] = reason
    actor = f"{calling_ae} ({tls_peer})" if tls_peer else calling_ae
    outcome = Outcome.SUCCESS if accepted else Outcome.REFUSED
    return AuditRecord(AuditKind.ASSOCIATION, actor or "(unknown AE)", outcome, address, detail=detail)


def instance_received(
    calling_ae: str | None,
    study_uid: str,
    series_uid: str,
    sop_instance_uid: str,
    sop_class_uid: str,
    *,
    new: bool,
    at: datetime,
) -> AuditRecord:
    detail: dict[str, Any] = {
        "series_uid": series_uid,
        "sop_instance_uid": sop_instance_uid,
        "sop_class_uid": sop_class_uid,
    }
    if not new:
        detail["repeat"] = True
    return AuditRecord(AuditKind.INSTANCE_RECEIVED, calling_ae or "", study_uid=study_uid, detail=detail, at=at)


def instance_refused(
    calling_ae: str, sop_class_uid: str, sop_instance_uid: str, status: int, reason: str
) -> AuditRecord:
    detail = {"sop_instance_uid": sop_instance_uid, "sop_class_uid": sop_class_uid, "status": f"0x{status:04X}"}
    outcome = Outcome.FAILED if status == 0x0110 else Outcome.REFUSED  # a processing failure: ours, not the data's
    return AuditRecord(AuditKind.INSTANCE_RECEIVED, calling_ae, outcome, detail={**detail, "reason": reason})


def instance_discarded(calling_ae: str, sop_class_uid: str, sop_instance_uid: str, reason: str) -> AuditRecord:
    """Acknowledged and dropped: a result sent back, predictd's own key image, a SOP class it does not read."""
    detail = {"sop_instance_uid": sop_instance_uid, "sop_class_uid": sop_class_uid, "discarded": reason}
    return AuditRecord(AuditKind.INSTANCE_RECEIVED, calling_ae, detail=detail)


def document_sent(destination: str, study_uid: str, sop_instance_uid: str, kind: str, run_no: int) -> AuditRecord:
    detail = {"sop_instance_uid": sop_instance_uid, "document": kind, "run_no": run_no}
    return AuditRecord(AuditKind.DOCUMENT_SENT, "predictd", peer=destination, study_uid=study_uid, detail=detail)


def operator_action(
    command: str,
    *,
    study_uid: str | None = None,
    outcome: Outcome = Outcome.SUCCESS,
    **detail: Any,
) -> AuditRecord:
    return AuditRecord(
        AuditKind.OPERATOR_ACTION, os_user(), outcome, study_uid=study_uid, detail={"command": command, **detail}
    )


def config_loaded(path: Path | None, settings_json: str, *, reload: bool = False) -> AuditRecord:
    """The settings a daemon runs with, as hashes: the file's bytes and the effective settings (environment
    overrides included), so a change shows without a secret ever entering the trail."""
    detail: dict[str, Any] = {
        "path": str(path.resolve()) if path else None,
        "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest() if path else None,
        "settings_sha256": hashlib.sha256(settings_json.encode()).hexdigest(),
        "reload": reload,
    }
    return AuditRecord(AuditKind.CONFIG_LOADED, os_user(), detail=detail)


def service(event: str, **detail: Any) -> AuditRecord:
    return AuditRecord(AuditKind.SERVICE, os_user(), detail={"event": event, **detail})


# --- reading ------------------------------------------------------------------------------------------------------


def recent(
    db: Database,
    *,
    since: datetime | None = None,
    kind: str | None = None,
    study_uid: str | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """The newest records first, for ``predictd audit ls``."""
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if since is not None:
        stmt = stmt.where(AuditEvent.at >= since)
    if kind:
        stmt = stmt.where(AuditEvent.kind == kind)
    if study_uid:
        stmt = stmt.where(AuditEvent.study_uid == study_uid)
    with db.transaction() as s:
        return [
            {
                "id": e.id,
                "at": e.at.isoformat(),
                "kind": e.kind,
                "outcome": e.outcome,
                "actor": e.actor,
                "peer": e.peer,
                "study_uid": e.study_uid,
                "source": e.source,
                "detail": e.detail,
            }
            for e in s.scalars(stmt)
        ]
