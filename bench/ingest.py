"""Ingest rate of predictd's receiver next to its peers in one run: storescp, a bare pynetdicom SCP, Orthanc.

    python -m bench.ingest [--small 500] [--large 20] [--associations 1,8] [--rounds 3] [--only predictd,orthanc]
    python -m bench.ingest --predictd-tree ../before      # adds "predictd@before": the receiver of another checkout
    python -m bench.ingest --only predictd --steps        # and where its C-STORE handler's time goes

dcmtk storescu (TCP_NODELAY, as a modality) sends the same files to each receiver on 127.0.0.1: ``--small`` copies
of the real CR (tests.support.CR_JLSL) at 512 x 512, 16-bit, explicit VR little endian, and ``--large`` copies at
2800 x 2800 (15.7 MB). With 8 associations the files are split over 8 storescu processes started together, one
study each. Every receiver starts afresh with empty storage for each measurement, and the receivers take turns
within a round (the machine is shared and noisy); img/s is the file count over the wall time from starting the
storescu processes to the last one's exit (association set-up included); min and median over the rounds. Dirty
pages are written back (``sync``) before each measurement, so no receiver pays for the previous one's writes.

The receivers: **predictd** (bench/ingest_receivers.py: the Receiver, spool and SQLite queue of `serve`, durable
before the ACK: file fsync, rename, folder fsync, row committed), **pynetdicom** (the same library with the received
file renamed and nothing else), **storescp** (dcmtk, ``--fork`` for parallel associations, writes without fsync),
**orthanc** (a durable PACS with an SQLite index, the peer the issue names).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.e2e.orthanc import NODELAY_ENV, OrthancServer
from tests.support import CR_JLSL, REPO, free_port, wait_until

SIZES = {"small": 512, "large": 2800}
AE_TITLE = "PREDICTD"


def make_files(folder: Path, count: int, side: int, associations: int) -> list[list[Path]]:
    """``count`` copies of the real CR resized to ``side`` square, 16-bit, split into one study per association."""
    src = pydicom.dcmread(CR_JLSL)
    pixels = src.pixel_array.astype(np.float32)
    rows = np.linspace(0, pixels.shape[0] - 1, side).astype(int)
    cols = np.linspace(0, pixels.shape[1] - 1, side).astype(int)
    resized = pixels[np.ix_(rows, cols)].astype(np.uint16)
    ds = src.copy()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = side, side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = resized.tobytes()
    ds["PixelData"].VR = "OW"
    ds["PixelData"].is_undefined_length = False
    batches: list[list[Path]] = []
    for a in range(associations):
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        batch = []
        for i in range(a, count, associations):
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = folder / f"{side}-{associations}-{i:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            batch.append(path)
        if batch:
            batches.append(batch)
    return batches


@contextlib.contextmanager
def python_receiver(
    kind: str, root: Path, tree: Path | None = None, extra: tuple[str, ...] = ()
) -> Iterator[tuple[int, str]]:
    """bench/ingest_receivers.py as a child process (``tree``: with another checkout's predictd first on the path)."""
    port = free_port()
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(_link_tree(tree, root.parent))
    root.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bench.ingest_receivers", kind, "--port", str(port), "--root", str(root), *extra]
    with open(root / "receiver.log", "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "listening":
            raise RuntimeError(f"{kind} receiver did not start (exit {proc.wait()})")
        yield port, AE_TITLE
    finally:
        proc.terminate()
        rest = proc.stdout.read() if proc.stdout else ""
        proc.wait(timeout=30)
        for line in rest.splitlines():
            if line.startswith("steps "):
                print(f"{root.name}: {line}", flush=True)


def _link_tree(tree: Path, where: Path) -> Path:
    """A folder holding ``predictd/<package>`` links into ``tree``, so its code is imported instead of this one's."""
    top = where / f"linktree-{tree.name}"
    if not top.exists():
        (top / "predictd").mkdir(parents=True)
        for package in ("daemon", "models", "reporting", "migrations"):
            (top / "predictd" / package).symlink_to(tree.resolve() / package)
    return top


@contextlib.contextmanager
def storescp(root: Path) -> Iterator[tuple[int, str]]:
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    cmd = ["storescp", "--fork", "-aet", AE_TITLE, "-od", str(root), str(port)]
    proc = subprocess.Popen(cmd, env=NODELAY_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _echo(port), timeout=20, what="storescp listening")
        yield port, AE_TITLE
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def orthanc(root: Path) -> Iterator[tuple[int, str]]:
    with OrthancServer(root) as pacs:
        yield pacs.dicom_port, pacs.aet


def _echo(port: int) -> bool:
    return subprocess.run(["echoscu", "-aec", AE_TITLE, "127.0.0.1", str(port)], capture_output=True).returncode == 0


def send(port: int, aec: str, batches: list[list[Path]]) -> float:
    """One storescu per batch, all started together; seconds until the last exits (each must succeed)."""
    start = time.perf_counter()
    commands = [["storescu", "-aec", aec, "127.0.0.1", str(port), *map(str, batch)] for batch in batches]
    procs = [
        subprocess.Popen(cmd, env=NODELAY_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for cmd in commands
    ]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - start
    for proc, err in zip(procs, errors, strict=True):
        if proc.returncode != 0 or "E: " in err:
            raise RuntimeError(f"storescu failed ({proc.returncode}): {err[-2000:]}")
    return elapsed


Receiver = Callable[[Path], contextlib.AbstractContextManager[tuple[int, str]]]


def receivers(tree: Path | None, steps: bool) -> dict[str, Receiver]:
    timing = ("--steps",) if steps else ()
    found: dict[str, Receiver] = {
        "predictd": lambda root: python_receiver("predictd", root, extra=timing),
        "pynetdicom": lambda root: python_receiver("pynetdicom", root),
        "pynetdicom-poll0.1ms": lambda root: python_receiver("pynetdicom", root, extra=("--poll", "0.0001")),
        "storescp": storescp,
        "orthanc": orthanc,
    }
    if tree is not None:
        found[f"predictd@{tree.name}"] = lambda root: python_receiver("predictd", root, tree, timing)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=500, help="512 x 512 16-bit files per measurement")
    parser.add_argument("--large", type=int, default=20, help="2800 x 2800 16-bit files (15.7 MB) per measurement")
    parser.add_argument("--associations", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated receiver names (default: all)")
    parser.add_argument("--predictd-tree", type=Path, help="another checkout whose predictd receiver runs too")
    parser.add_argument("--steps", action="store_true", help="print where predictd's handler time went, per run")
    args = parser.parse_args()
    chosen = receivers(args.predictd_tree, args.steps)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    fanouts = [int(a) for a in args.associations.split(",")]
    rates: dict[tuple[str, str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="predictd-ingest-") as tmp:
        work = Path(tmp)
        sets = {
            (size, fan): make_files(work, count, SIZES[size], fan)
            for size, count in (("small", args.small), ("large", args.large))
            if count
            for fan in fanouts
        }
        for r in range(args.rounds):
            for (size, fan), batches in sets.items():
                count = sum(len(b) for b in batches)
                for name, receiver in chosen.items():
                    root = work / f"{name}-{r}-{size}-{fan}"
                    os.sync()  # the last receiver's dirty pages must not be flushed on this one's fsyncs
                    with receiver(root) as (port, aec):
                        rates.setdefault((name, size, fan), []).append(count / send(port, aec, batches))
                    shutil.rmtree(root, ignore_errors=True)
    print(f"{'receiver':22s} {'files':6s} {'assoc':>5s} {'min img/s':>10s} {'median img/s':>13s}")
    for (name, size, fan), values in sorted(rates.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        print(f"{name:22s} {size:6s} {fan:5d} {min(values):10.1f} {statistics.median(values):13.1f}")


if __name__ == "__main__":
    main()
