"""Benchmarks of the spine (not timed tests): ingest rate and classify rate on this machine.

    .venv/bin/python -m bench.run [--images 200] [--classify 20]

ingest: dcmtk storescu sends N copies of the real CR hip file (JPEG-LS, 2140x1760, one association) to a predictd
Receiver writing durably to a spool and recording rows in SQLite; img/s from the first to the last acknowledgement.
classify: the untrained demonstration model (224 px) on the same file, decode + preprocess + forward, on CPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from predictd.daemon import arrivals
from predictd.daemon.config import ReceiveSettings
from predictd.daemon.db import Database
from predictd.daemon.listeners import Receiver
from predictd.daemon.log import configure_logging
from predictd.daemon.spool import Spool
from predictd.models.demo import install_demo
from predictd.models.inference import Engine
from tests.support import RG2_HIP_JLSL

SOURCE = RG2_HIP_JLSL  # the figures in bench/README.md were measured on it


def _copies(n: int, folder: Path) -> list[Path]:
    ds = pydicom.dcmread(SOURCE)
    ds.StudyInstanceUID = generate_uid()
    paths = []
    for i in range(n):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def ingest(n: int, tmp: Path) -> float:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = Database(f"sqlite:///{tmp / 'bench.db'}")
    db.upgrade()
    files = _copies(n, tmp)
    receiver = Receiver(
        ReceiveSettings(port=port, min_free_bytes=0),
        Spool(tmp / "spool"),
        record=lambda i: arrivals.note_instance(db, i),
    )
    receiver.start()
    try:
        t0 = time.perf_counter()
        subprocess.run(
            ["storescu", "-aec", "PREDICTD", "-xt", "127.0.0.1", str(port), *map(str, files)],
            check=True,
            capture_output=True,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        elapsed = time.perf_counter() - t0
    finally:
        receiver.stop()
    return n / elapsed


def classify(n: int, tmp: Path) -> float:
    install_demo(tmp / "models")
    engine = Engine.load(tmp / "models", device="cpu")
    datasets = [pydicom.dcmread(SOURCE) for _ in range(n)]
    engine.predict(datasets[:1])  # warm-up
    t0 = time.perf_counter()
    engine.predict(datasets)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--classify", type=int, default=20)
    args = parser.parse_args()
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"ingest   : {ingest(args.images, Path(tmp)):7.1f} img/s  ({args.images} x JPEG-LS CR, SQLite, fsync)")
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"classify : {classify(args.classify, Path(tmp)):7.1f} img/s  (demo model, CPU, decode+preprocess+forward)"
        )


if __name__ == "__main__":
    main()
