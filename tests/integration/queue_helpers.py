"""Small builders for queue tests: instances as the receiver would report them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom.uid import generate_uid

from predictd.daemon import arrivals
from predictd.daemon.db import Database

CR = "1.2.840.10008.5.1.4.1.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class FakeStored:
    """Stands in for receive.StoredInstance: queue tests need the row, not a file."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str = CR
    transfer_syntax_uid: str = EXPLICIT_LE
    modality: str | None = "CR"
    path: Path = Path("/nonexistent.dcm")
    size_bytes: int = 1
    calling_ae: str | None = "MODALITY"
    patient_id: str | None = None
    accession_number: str | None = None
    study_date: str | None = None


def stored(study_uid: str | None = None, modality: str | None = "CR") -> FakeStored:
    return FakeStored(study_uid or generate_uid(), generate_uid(), generate_uid(), modality=modality)


def ready_studies(db: Database, n: int, now: datetime) -> list[str]:
    """n studies with one instance each, swept to ready."""
    uids = []
    for _ in range(n):
        inst = stored()
        arrivals.note_instance(db, inst, now=now)
        uids.append(inst.study_uid)
    arrivals.sweep_ready(db, quiet_seconds=0, now=now)
    return uids
