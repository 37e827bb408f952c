"""Decoding and preprocessing in worker processes: a codec that crashes natively kills a worker, never the daemon.

GDCM throws C++ exceptions that nothing in Python can catch on some hostile headers (a JPEG-LS image claiming 40000 x
40000 pixels aborts the process), so the daemon never decodes in its own process: :class:`DecodePool` runs every
decode in worker processes. When a worker dies, the pool is rebuilt and the images that were in flight are decoded
one at a time, each in its own fresh worker, so the one that kills a worker again is named (instance, transfer syntax,
the decoder plugin that crashes on it) and fails alone; the others go through.

Nothing here imports torch: the fork server and its workers stay small. Decoding is the slow half on compressed
images (a 3000x2500 JPEG 2000 takes ~0.45 s on one core, see bench/DECODERS.md); workers get file paths (or pickled
datasets: ~1 ms each) and return only the small model inputs, never the full-resolution pixels.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import pixel_array

from predictd.models.card import Preprocessing
from predictd.models.content_check import content_problem
from predictd.models.decoders import preferred_plugins
from predictd.models.preprocess import (
    PixelDecodeError,
    content_box,
    gray_to_input,
    laterality_of,
    split_bilateral,
    to_gray,
)


class DecodeWorkerError(RuntimeError):
    """A decode worker process died (a codec crashed natively on a hostile file); the pool has been rebuilt.

    ``reproduced``: the same instance killed a worker again when decoded alone, so it is the instance, not chance
    (an out-of-memory kill, an operator's signal), and retrying it would only crash again.
    """

    def __init__(self, message: str, *, instance: str | None = None, reproduced: bool = False) -> None:
        super().__init__(message)
        self.instance = instance
        self.reproduced = reproduced


@dataclass(frozen=True)
class Plan:
    """What to prepare per image: whole-image inputs for every card, half-image inputs for bilateral cards."""

    whole: tuple[Preprocessing, ...]
    halves: tuple[Preprocessing, ...] = ()
    display_side: int = 0
    """When positive, also the image to draw key images on, its long side at most this (0: none)."""


@dataclass(frozen=True)
class Display:
    """An image shrunk for key images, and where each card's input came from on it (models.explain_engine)."""

    grays: dict[str, np.ndarray]
    """Window → the image as uint8 gray, the long side at most ``Plan.display_side`` (one per window the cards use)."""
    boxes: dict[Preprocessing, tuple[slice, slice]]
    """The part of the image each preprocessing read (its content box, or the whole), in display pixels."""


@dataclass(frozen=True)
class Prepared:
    """One image after decode + preprocessing: what a decode worker sends back (small, cheap to pickle)."""

    sop_instance_uid: str
    series_instance_uid: str
    inputs: dict[Preprocessing, np.ndarray]
    """(in_chans, size, size) float32 per distinct preprocessing of the resident cards."""
    header: pydicom.Dataset = field(default_factory=pydicom.Dataset)
    """The few tags the cascade reads (body part, descriptions, view), without pixels."""
    laterality: str | None = None
    """Of the whole image (ImageLaterality / Laterality)."""
    halves: tuple[tuple[str | None, dict[Preprocessing, np.ndarray]], ...] = ()
    """(patient side or None, inputs) of the image-left and image-right half, for bilateral cards."""
    display: Display | None = None
    """For key images, when the plan asks (``Plan.display_side``): a few hundred KB, not the full pixels."""
    content_problem: str | None = None
    """Why the pixels hold no radiograph at all (models.content_check): every model then answers "not assessed"."""


# --- what a worker runs: module-level functions, unpickled by name ------------------------------------------


_HEADER_TAGS = ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName", "ViewPosition", "Modality")


def _header(ds: pydicom.Dataset) -> pydicom.Dataset:
    header = pydicom.Dataset()
    for keyword in _HEADER_TAGS:
        if keyword in ds:
            setattr(header, keyword, ds.get(keyword))
    return header


def framed(gray: np.ndarray, prep: Preprocessing) -> tuple[slice, slice]:
    """The part of ``gray`` a card reads: its content box when the card crops, else the whole image."""
    if prep.crop_content:
        return content_box(gray)
    return slice(0, gray.shape[0]), slice(0, gray.shape[1])


def looks_bilateral(gray: np.ndarray) -> bool:
    """An AP pelvis (both hips) is a landscape image; a single-hip view is portrait and must not be cut in two.

    A stand-in for a view classifier: only images at least as wide as tall are split for bilateral cards.
    """
    height, width = gray.shape[:2]
    return width >= height


def prepare(ds: pydicom.Dataset, plan: Plan) -> Prepared:
    """Decode once per VOI choice, then one input array per preprocessing (and per half for bilateral cards)."""
    grays: dict[str, np.ndarray] = {}

    def gray(window: str) -> np.ndarray:
        if window not in grays:
            try:
                grays[window] = to_gray(ds, window)
            except PixelDecodeError as exc:
                uid = ds.get("SOPInstanceUID", "<no SOP Instance UID>")
                raise PixelDecodeError(f"instance {uid}: {exc}") from exc
        return grays[window]

    found: dict[tuple[str, bool], tuple[slice, slice]] = {}

    def box(prep: Preprocessing) -> tuple[slice, slice]:  # one content box per window and crop choice, not per card
        key = (prep.window, prep.crop_content)
        if key not in found:
            found[key] = framed(gray(prep.window), prep)
        return found[key]

    def read(prep: Preprocessing, part: np.ndarray) -> np.ndarray:  # part is the card's box already
        return gray_to_input(part, replace(prep, crop_content=False))

    inputs = {prep: read(prep, gray(prep.window)[box(prep)]) for prep in plan.whole}
    halves: list[tuple[str | None, dict[Preprocessing, np.ndarray]]] = []
    bases = {p: gray(p.window)[box(p)] for p in plan.halves}
    if plan.halves and looks_bilateral(bases[plan.halves[0]]):
        split = {p: split_bilateral(bases[p], ds) for p in plan.halves}
        for i in range(2):
            side = split[plan.halves[0]][i][0]
            halves.append((side, {p: read(p, split[p][i][1]) for p in plan.halves}))
    display = _display(gray, box, plan) if plan.display_side > 0 else None
    first = next(iter((*plan.whole, *plan.halves)), None)
    problem = None if first is None else content_problem(gray(first.window)[box(first)], cropped=first.crop_content)
    return Prepared(
        str(ds.get("SOPInstanceUID", "")),
        str(ds.get("SeriesInstanceUID", "")),
        inputs,
        header=_header(ds),
        laterality=laterality_of(ds),
        halves=tuple(halves),
        display=display,
        content_problem=problem,
    )


def _display(
    gray: Callable[[str], np.ndarray], box: Callable[[Preprocessing], tuple[slice, slice]], plan: Plan
) -> Display:
    """The decoded image shrunk to the key images' size (area average), with each input's box scaled onto it."""
    preps = tuple(dict.fromkeys((*plan.whole, *plan.halves)))
    rows, cols = gray(preps[0].window).shape
    scale = min(1.0, plan.display_side / max(rows, cols))
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    grays = {}
    for window in dict.fromkeys(p.window for p in preps):
        full = gray(window).astype(np.float32, copy=False)  # to_gray: float32 in [0, 1]
        # BOX (area average) is antialiased for shrinking and 4x cheaper than Lanczos here (10 vs 38 ms at 3.8 Mpx)
        small = np.asarray(Image.fromarray(full, mode="F").resize(size, Image.Resampling.BOX)) if scale < 1 else full
        grays[window] = np.round(np.clip(small, 0.0, 1.0) * 255).astype(np.uint8)

    def scaled(box: tuple[slice, slice]) -> tuple[slice, slice]:
        (r0, r1), (c0, c1) = ((int(b.start), int(b.stop)) for b in box)
        top, left = round(r0 * scale), round(c0 * scale)
        return slice(top, max(top + 1, round(r1 * scale))), slice(left, max(left + 1, round(c1 * scale)))

    return Display(grays, {p: scaled(box(p)) for p in preps})


def prepare_file(path: str, plan: Plan) -> Prepared:
    """Read + decode one file. dcmread errors (FileNotFoundError, InvalidDicomError) pass through unchanged."""
    return prepare(pydicom.dcmread(path), plan)


Decode = Callable[[Any, Plan], Prepared]
Job = tuple[Decode, Any]
"""A module-level decode function and its first argument (a path or a dataset): picklable by name."""


def _worker_ready() -> int:
    return os.getpid()


def _decode_with(source: str | pydicom.Dataset, plugin: str) -> None:
    """Decode ``source`` with one plugin only; its Python errors are ignored (only a crash matters here)."""
    ds = pydicom.dcmread(source) if isinstance(source, str) else source
    try:
        pixel_array(ds, decoding_plugin=plugin)
    except Exception:  # a refusal is not what is being looked for
        return


def _pool_context() -> multiprocessing.context.BaseContext:
    """forkserver where there is one (Linux): never fork a process that holds torch threads or CUDA.

    The fork server imports this module once (pydicom, numpy and the codecs, no torch) and forks workers from that
    clean process, so a worker starts in milliseconds. Elsewhere: spawn.
    """
    if sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])  # ignored when the fork server is already running
        return ctx
    return multiprocessing.get_context("spawn")


def describe(source: str | pydicom.Dataset) -> tuple[str, str, tuple[str, ...]]:
    """(SOP Instance UID, transfer syntax name, decoder plugins in the order tried) of a job's image, from its header
    only: safe to read in the caller's process."""
    ds = pydicom.dcmread(source, stop_before_pixels=True) if isinstance(source, str) else source
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    name = syntax.name if syntax is not None else "unknown transfer syntax"
    return str(ds.get("SOPInstanceUID", "<no SOP Instance UID>")), name, preferred_plugins(ds)


class DecodePool:
    """Worker processes that decode and preprocess. Not thread-safe (the engine's callers hold a lock)."""

    def __init__(self, workers: int, setup: Callable[[], None] | None = None) -> None:
        """``setup`` runs first in every worker process (it must be picklable: a module-level function or partial)."""
        if workers < 1:
            raise ValueError(f"a decode pool needs at least one worker, not {workers}")
        self.workers = workers
        self._setup = setup
        self._executor: ProcessPoolExecutor | None = None
        self.start()

    def start(self) -> None:
        """Start every worker now, not on the first study: start-up errors surface at load."""
        executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=_pool_context(), initializer=self._setup)
        try:
            for f in [executor.submit(_worker_ready) for _ in range(self.workers)]:
                f.result()
        except BrokenProcessPool as exc:
            executor.shutdown(wait=False, cancel_futures=True)
            raise DecodeWorkerError(f"decode workers could not start ({exc}); see their traceback above") from exc
        self._executor = executor

    def submit(self, job: Job, plan: Plan) -> Future[Prepared]:
        if self._executor is None:
            raise RuntimeError("the decode pool is closed")
        fn, arg = job
        return self._executor.submit(fn, arg, plan)

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _restart(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        self.start()

    def _kills_a_worker(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` in a worker; True when the worker died doing it (the pool is rebuilt)."""
        assert self._executor is not None
        try:
            self._executor.submit(fn, *args).result()
        except BrokenProcessPool:
            self._restart()
            return True
        except Exception:  # a Python error is the instance's own failure, reported when it is decoded for real
            return False
        return False

    def after_crash(self, jobs: Sequence[Job], plan: Plan) -> DecodeWorkerError:
        """A worker died while ``jobs`` were in flight: rebuild the pool, find the job that kills a worker again.

        Returns the error to raise: naming the instance, its transfer syntax and the decoder that crashes on it when
        one reproduces, else an unreproduced crash (nothing to blame on an image; worth a retry).
        """
        self._restart()
        for fn, arg in jobs:
            if not self._kills_a_worker(fn, arg, plan):
                continue
            uid, syntax, plugins = describe(arg)
            crashing = (name for name in plugins if self._kills_a_worker(partial(_decode_with, plugin=name), arg))
            decoder = next(crashing, None) or "one of " + (", ".join(plugins) or "pydicom's default plugins")
            return DecodeWorkerError(
                f"decoding instance {uid} ({syntax}) kills the decoder process ({decoder} crashed natively); "
                "the image cannot be read",
                instance=uid,
                reproduced=True,
            )
        return DecodeWorkerError("a decode worker died, and no image in flight kills one again; retry later")
