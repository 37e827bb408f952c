"""Benchmarks of the models path (not timed tests): decode per transfer syntax, bare forward per architecture, and
the whole image → prediction path against the bare forward of the same model on the same device.

    .venv/bin/python -m bench.models [--quick] [--device cpu|cuda] [--only syntax,forward,whole]

syntax : the real CR hip (JPEG-LS, 10 bits) and pydicom-data RG1_UNCR.dcm (15 bits) transcoded once into every
         syntax of tests/support/transcode.py that takes their bit depth; dcmread + preprocess at 380 px, pinned
         to one core, images/s from the median of several repeats.
forward: Engine.forward_only on an already preprocessed batch (the real hip image, repeated), random-init models
         written by models.demo.write_model (1 input channel, the card defaults: applies to any image).
whole  : Engine.predict_files on N copies of the hip file (decode_workers 0 and 2) vs the bare forward of as many
         images at the same batch size on an engine with every core for torch, the two alternating for several
         rounds; ratio whole/bare per round, min and median (the issue's target: >= 0.8).

Only torch's forward uses several threads; decoding (pylibjpeg, pydicom, numpy, PIL) runs on one core per process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.uid import generate_uid

from predictd.daemon.log import configure_logging
from predictd.models.card import Label, Preprocessing
from predictd.models.demo import write_model
from predictd.models.inference import Engine
from predictd.models.preprocess import preprocess
from tests.support import RG2_HIP_JLSL, pydicom_data_file
from tests.support.transcode import MAX_BITS, SYNTAXES, TranscodeToolMissing, accepts, transcode

LABELS = (Label("a", "class a"), Label("b", "class b"))


@dataclass(frozen=True)
class Arch:
    key: str
    arch: str
    input_size: int
    slow: bool = False
    """Seconds per image on a small CPU: time one or two batches only, and no whole-path run under --quick."""


ARCHS: tuple[Arch, ...] = (
    Arch("efficientnet_b4@380", "efficientnet_b4", 380),  # hip-hardware paper
    Arch("dm_nfnet_f3@320", "dm_nfnet_f3", 320, slow=True),  # shoulder-implant paper (timm: DeepMind NFNet-F3)
    Arch("efficientnet_b0@384", "efficientnet_b0", 384),  # catalog
    Arch("densenet121@224", "densenet121", 224),  # catalog
    Arch("test_efficientnet@224", "test_efficientnet", 224),  # demo model (tiny)
)


# --- helpers ------------------------------------------------------------------------------------------------------


@contextmanager
def one_core() -> Iterator[None]:
    """Pin the calling thread to a single CPU (decode runs in it); restored afterwards."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: imports, plugin look-up, page cache
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _tree_cpu_seconds() -> float:
    """CPU seconds of this process and its live descendants, reaped children included (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            procs[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / tick)
    mine, total, grew = {os.getpid()}, 0.0, True
    while grew:
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                grew = True
    for pid in mine:
        total += procs.get(pid, (0, 0.0))[1]
    return total


def _machine_cpu_seconds() -> float:
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")  # user nice system irq softirq steal


@contextmanager
def contention(section: str) -> Iterator[None]:
    """Print how much CPU other processes took while ``section`` ran: on 2 cores, any of it lowers the figures."""
    if not Path("/proc/stat").is_file():
        yield
        return
    machine, tree, t0 = _machine_cpu_seconds(), _tree_cpu_seconds(), time.perf_counter()
    yield
    others = (_machine_cpu_seconds() - machine) - (_tree_cpu_seconds() - tree)
    wall = time.perf_counter() - t0
    share = max(0.0, others) / (wall * len(os.sched_getaffinity(0)))
    flag = "  WARNING: machine busy, figures low" if share > 0.05 else ""
    print(
        f"[{section}: {wall:.0f} s; other processes used {max(0.0, others):.1f} CPU-s = {share:.0%} of the CPUs]{flag}"
    )


def copies(src: Path, n: int, folder: Path) -> list[Path]:
    """N copies of ``src`` with new UIDs (as distinct instances of one study would arrive)."""
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def load_engine(models_dir: Path, arch: Arch, device: str, batch_size: int, decode_workers: int = 0) -> Engine:
    directory = models_dir / arch.arch
    if not (directory / "card.json").is_file():
        write_model(directory, name=arch.arch, task="bench", labels=LABELS, arch=arch.arch, input_size=arch.input_size)
    return Engine.load(
        models_dir, enabled=[arch.arch], device=device, batch_size=batch_size, decode_workers=decode_workers
    )


def hip_batch(size: int, n: int) -> np.ndarray:
    one = preprocess(pydicom.dcmread(RG2_HIP_JLSL), Preprocessing(input_size=size))
    return np.repeat(one[np.newaxis], n, axis=0)


# --- 1. decode + preprocess per transfer syntax -------------------------------------------------------------------


def bench_syntaxes(tmp: Path, repeats: int) -> None:
    prep = Preprocessing(input_size=380)
    sources = {"hip CR JPEG-LS 2140x1760": RG2_HIP_JLSL, "RG1_UNCR 1955x1841": pydicom_data_file("RG1_UNCR.dcm")}
    print(f"\n== decode + preprocess @380, one core, median of {repeats} (dcmread + preprocess) ==")
    print(f"{'source':26} {'bits':>4} {'syntax':16} {'MB':>6} {'ms/img':>8} {'img/s':>7}")
    for label, src in sources.items():
        bits = int(pydicom.dcmread(src, stop_before_pixels=True).BitsStored)
        for syntax in SYNTAXES:
            if not accepts(bits, syntax):
                print(f"{label:26} {bits:4d} {syntax:16} skipped: takes at most {MAX_BITS[syntax]} bits stored")
                continue
            dst = tmp / "syntax" / f"{src.stem}.{syntax}.dcm"
            try:
                transcode(src, syntax, dst)
            except TranscodeToolMissing as exc:
                print(f"{label:26} {bits:4d} {syntax:16} skipped: {exc}")
                continue
            with one_core():
                sec = median_seconds(lambda d=dst: preprocess(pydicom.dcmread(d), prep), repeats)  # type: ignore[misc]
            mb = dst.stat().st_size / 1e6
            print(f"{label:26} {bits:4d} {syntax:16} {mb:6.2f} {sec * 1e3:8.0f} {1 / sec:7.2f}", flush=True)


# --- 2. bare forward per architecture -----------------------------------------------------------------------------


def bare_forward(engine: Engine, arch: Arch, batch_size: int, seconds: float, max_batches: int) -> tuple[float, int]:
    """(images/s, images timed) of forward_only on batches of ``batch_size``, after one warm-up batch.

    Batches run until ``seconds`` have passed (at least one, at most ``max_batches``); the rate is from the median
    batch time, so a burst of another process on a small machine does not decide the figure.
    """
    batch = hip_batch(arch.input_size, batch_size)
    engine.forward_only(batch, arch.arch)  # warm-up (and cudnn autotune on CUDA)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_batches and (not times or time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        engine.forward_only(batch, arch.arch)
        times.append(time.perf_counter() - t0)
    return batch_size / statistics.median(times), batch_size * len(times)


def bench_forward(
    tmp: Path, archs: Sequence[Arch], device: str, batch_sizes: Sequence[int], seconds: float, quick: bool
) -> dict[tuple[str, int], float]:
    print(f"\n== bare forward (Engine.forward_only), device {device}, torch threads {torch.get_num_threads()} ==")
    print(f"{'arch':24} {'batch':>5} {'img/s':>8} {'images timed':>13}")
    rates: dict[tuple[str, int], float] = {}
    for arch in archs:
        engine = load_engine(tmp / "models", arch, device, max(batch_sizes))
        with engine:
            for bs in batch_sizes:
                cap = (1 if quick or bs > 1 else 2) if arch.slow else 10_000
                rate, n = bare_forward(engine, arch, bs, seconds, cap)
                rates[(arch.key, bs)] = rate
                print(f"{arch.key:24} {bs:5d} {rate:8.2f} {n:13d}", flush=True)
    return rates


# --- 3. whole path vs bare forward --------------------------------------------------------------------------------


def bench_whole(
    tmp: Path,
    archs: Sequence[Arch],
    device: str,
    batch_size: int,
    images: int,
    workers: Sequence[int],
    quick: bool,
    rounds: int,
) -> None:
    """Rounds alternate a bare forward of as many images (an engine with every core for torch) and the whole path
    (decode workers ``w``), so load drift lands in both; whole/bare is per round, min and median over the rounds."""
    files = copies(RG2_HIP_JLSL, images, tmp / "copies")
    print(f"\n== whole path (Engine.predict_files, {images} x hip JPEG-LS) vs bare forward, batch {batch_size} ==")
    print(
        f"{'arch':24} {'workers':>7} {'threads':>7} {'images':>6} {'rounds':>6} {'whole img/s min/med':>19} "
        f"{'bare img/s min/med':>18} {'whole/bare min/med':>18} {'>= 0.8':>8}"
    )
    for arch in archs:
        if arch.slow and quick:
            print(f"{arch.key:24} skipped under --quick (seconds per image on CPU)")
            continue
        n_files = files[:batch_size] if arch.slow else files
        batch = hip_batch(arch.input_size, batch_size)
        batches = -(-len(n_files) // batch_size)
        for w in workers:
            with (
                load_engine(tmp / "models", arch, device, batch_size) as bare_engine,
                load_engine(tmp / "models", arch, device, batch_size, decode_workers=w) as engine,
            ):
                threads = torch.get_num_threads()  # every core: the decode workers take their turn
                bare_engine.forward_only(batch, arch.arch)  # warm-ups (cudnn autotune on CUDA)
                engine.predict_files(n_files[:1])
                wholes, bares = [], []
                for _ in range(1 if arch.slow else rounds):
                    t0 = time.perf_counter()
                    for _ in range(batches):
                        bare_engine.forward_only(batch, arch.arch)
                    bares.append(batches * batch_size / (time.perf_counter() - t0))
                    t0 = time.perf_counter()
                    engine.predict_files(n_files)
                    wholes.append(len(n_files) / (time.perf_counter() - t0))
            ratios = [a / b for a, b in zip(wholes, bares, strict=True)]
            verdict = "met" if statistics.median(ratios) >= 0.8 else "NOT met"
            print(
                f"{arch.key:24} {w:7d} {threads:7d} {len(n_files):6d} {len(ratios):6d} {_min_med(wholes):>19} "
                f"{_min_med(bares):>18} {_min_med(ratios):>18} {verdict:>8}",
                flush=True,
            )


def _min_med(values: Sequence[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, shorter timings, no NFNet whole path")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (forward and whole path)")
    parser.add_argument("--only", default="syntax,forward,whole", help="comma-separated sections")
    parser.add_argument("--archs", default="", help="comma-separated timm names (default: all of ARCHS)")
    parser.add_argument("--batch-sizes", default="", help="bare forward batch sizes (default 1,8; 1,8,32 on cuda)")
    parser.add_argument("--images", type=int, default=0, help="whole path: copies of the hip file (default 16/32)")
    parser.add_argument("--workers", default="0,2", help="whole path: decode_workers values")
    args = parser.parse_args()
    configure_logging("WARNING")
    sections = set(args.only.split(","))
    cuda = args.device.startswith("cuda")
    archs = [a for a in ARCHS if not args.archs or a.arch in args.archs.split(",")]
    batch_sizes = (
        [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else ([1, 8, 32] if cuda else [1, 8])
    )
    seconds = 3.0 if args.quick else 8.0
    images = args.images or (16 if args.quick else 32)
    workers = [int(w) for w in args.workers.split(",")]
    print(f"torch {torch.__version__}, {len(os.sched_getaffinity(0))} CPUs, device {args.device}")
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name()}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if "syntax" in sections:
            with contention("syntax"):
                bench_syntaxes(tmp, 3 if args.quick else 7)
        if "forward" in sections:
            with contention("forward"):
                bench_forward(tmp, archs, args.device, batch_sizes, seconds, args.quick)
        if "whole" in sections:
            with contention("whole"):
                bench_whole(
                    tmp,
                    archs,
                    args.device,
                    8 if not cuda else 32,
                    images,
                    workers,
                    args.quick,
                    3 if args.quick else 5,
                )
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
