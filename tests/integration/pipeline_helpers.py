"""Build a pipeline without the network: a real spool, a real database, a tiny real model, real DICOM files."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from predictd.daemon import arrivals
from predictd.daemon.config import Settings, load_settings
from predictd.daemon.db import Database
from predictd.daemon.receive import StoredInstance
from predictd.daemon.spool import Spool
from predictd.daemon.stage import StageContext
from predictd.daemon.worker import Worker
from predictd.models.card import Label
from predictd.models.demo import write_model
from predictd.models.inference import Engine

LABELS = (
    Label("none", "no hardware"),
    Label("tha", "total hip arthroplasty"),
    Label("dhs", "dynamic hip screw"),
)


def settings_for(tmp: Path, url: str, **overrides: Any) -> Settings:
    sections: dict[str, Any] = {
        "spool": {"dir": tmp / "spool"},
        "database": {"url": url},
        "models": {"dir": tmp / "models", "device": "cpu"},
        "send": {"outbox_dir": tmp / "outbox", "backoff_base_seconds": 0.01, "backoff_cap_seconds": 0.05},
        "queue": {"quiet_seconds": 0, "backoff_base_seconds": 0.01, "backoff_cap_seconds": 0.05},
    }
    for key, value in overrides.items():
        sections.setdefault(key, {}).update(value)
    return load_settings(None, **sections)


def context(tmp: Path, db: Database, *, model: dict[str, Any] | None = None, **overrides: Any) -> StageContext:
    """A stage context with one tiny real model (``model`` passes card fields such as applies_to to write_model)."""
    settings = settings_for(tmp, db.url, **overrides)
    write_model(settings.models.dir / "tiny_hip", name="tiny_hip", task="hip_hardware", labels=LABELS, **(model or {}))
    engine = Engine.load(settings.models.dir, device="cpu")
    return StageContext(settings=settings, db=db, spool=Spool(settings.spool.dir), engine=engine)


def receive_file(ctx: StageContext, path: Path) -> StoredInstance:
    """What the receiver does for one C-STORE: durable copy into the spool, then the row."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    spooled, size = ctx.spool.write_instance(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, path.read_bytes()
    )
    stored = StoredInstance(
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        modality=ds.get("Modality"),
        path=spooled,
        size_bytes=size,
        calling_ae="TEST",
    )
    arrivals.note_instance(ctx.db, stored)
    return stored


def copy_as_new_study(src: Path, dst: Path, *, study_uid: str | None = None, garbage_pixels: bool = False) -> Path:
    """A copy with new UIDs (a PACS would call an old UID a duplicate); optionally with undecodable pixel data."""
    shutil.copyfile(src, dst)
    ds = pydicom.dcmread(dst)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if garbage_pixels:
        ds.PixelData = encapsulate([b"\x01\x02not a JPEG-LS codestream" * 64])
    ds.save_as(dst)
    return dst


def drain(ctx: StageContext, *, max_rounds: int = 50) -> int:
    """Sweep and work until nothing is due; returns how many stage runs happened."""
    worker = Worker(ctx, "test-worker")
    for rounds in range(max_rounds):
        arrivals.sweep_ready(ctx.db, quiet_seconds=0)
        if not worker.work_once():
            return rounds
    raise AssertionError(f"queue still busy after {max_rounds} stage runs")
