"""The resident models: load cards + weights once, then run batched forwards and domain gates on CUDA or CPU.

The engine is resident for the life of the daemon: weights are verified against the card's sha256 before
they are trusted, every model sees the exact preprocessing its card names, and the output is plain
:class:`~models.prediction.Prediction` objects so nothing downstream needs torch. Which model reads which image,
and how answers become Predictions, is models.cascade_run; Grad-CAM of the resident models is models.explain_engine.

With ``decode_workers > 0`` decode + preprocessing run in a :class:`~models.decode_pool.DecodePool` and
:meth:`Engine.predict_files` pipelines: while batch k runs forward, batch k+1 decodes; a worker killed by a codec
fails only the image that kills it. The library default is 0 (decode in the calling thread, for tools and
training); the daemon always runs at least one worker (``models.decode_workers``), so no codec crash can take it
down. On a GPU host give the pool most of the cores.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from types import TracebackType

import numpy as np
import pydicom
import torch

from predictd.models.card import ModelCard
from predictd.models.cascade import Classification
from predictd.models.cascade_run import HALVES, GateVerdict, run_cascade
from predictd.models.decode_pool import DecodePool, DecodeWorkerError, Job, Plan, Prepared, prepare, prepare_file
from predictd.models.explain_engine import KEY_IMAGE_SIDE
from predictd.models.explain_engine import overlays as draw_overlays
from predictd.models.features import forward_with_features
from predictd.models.loading import Resident, load_resident, resolve_device, select_installed
from predictd.models.prediction import Prediction

__all__ = ["HALVES", "Classification", "DecodeWorkerError", "Engine"]


def _cpu_threads() -> int:
    """CPUs this process may run on (cgroup/affinity aware, unlike os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _configure_torch(device: torch.device, threads: int) -> None:
    """Process-wide torch settings, applied once per distinct value (set_num_threads is not free).

    On CPU torch gets every core this process may use (``threads`` 0) unless told otherwise: the decode processes
    are idle while a study's forward runs (its images are decoded first), and leaving them a core of two cost 19 %
    of the studies per minute (76.6 vs 91.5, the pipeline as `bench/throughput.py` runs it, 2 cores; bench/README.md).
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return
    threads = threads or _cpu_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class Engine:
    """Resident models. Build with :meth:`load`; predict* are not thread-safe (callers hold a lock).

    Call :meth:`close` (or use it as a context manager) to stop the decode workers, if any.
    """

    def __init__(
        self,
        residents: Sequence[Resident],
        device: torch.device,
        batch_size: int = 16,
        *,
        decode_workers: int = 0,
        channels_last: bool = False,
        autocast_dtype: torch.dtype | None = None,
        pad_batches: bool = False,
        worker_setup: Callable[[], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        if decode_workers < 0:
            raise ValueError(f"decode_workers must be 0 or more, not {decode_workers}")
        self._residents = sorted(residents, key=lambda r: r.card.name)
        self._device = device
        self._batch_size = batch_size
        self._decode_workers = decode_workers
        self._channels_last = channels_last
        self._autocast_dtype = autocast_dtype
        self._pad_batches = pad_batches
        self._preps = tuple(dict.fromkeys(r.card.preprocessing for r in self._residents))
        self._plan = Plan(
            whole=self._preps,
            halves=tuple(dict.fromkeys(r.card.preprocessing for r in self._residents if r.card.bilateral)),
        )
        self._pinned: dict[tuple[int, ...], torch.Tensor] = {}
        self._pool = DecodePool(decode_workers, setup=worker_setup) if decode_workers else None

    @classmethod
    def load(
        cls,
        models_dir: Path,
        enabled: Sequence[str] = (),
        device: str = "auto",
        batch_size: int = 16,
        *,
        decode_workers: int = 0,
        torch_threads: int = 0,
        compile: bool = False,
        channels_last: bool = True,
        cpu_bf16: bool = False,
        worker_setup: Callable[[], None] | None = None,
    ) -> Engine:
        """Every card under ``models_dir`` (or only the ``enabled`` names), weights checked by sha256.

        ``decode_workers``: processes that decode + preprocess (0: in the calling thread, the right choice on a
        small CPU-only host). ``torch_threads``: torch's threads on CPU (0: every CPU this process may use).
        ``compile``: ``torch.compile`` each model (slow first batch; partial batches are
        zero-padded to ``batch_size`` so it compiles once). ``channels_last``: default on, for CPU too (measured
        faster there as well, the same outputs: bench/channels_last.py).
        On CUDA the forward runs under bf16 autocast; on CPU in float32 unless ``cpu_bf16``. ``worker_setup`` runs
        first in each decode worker (picklable: the daemon's log set-up, so a worker's warnings are JSON too).
        """
        models_dir = Path(models_dir)
        selected = select_installed(models_dir, enabled)
        dev = resolve_device(device)
        _configure_torch(dev, torch_threads)
        residents = [load_resident(d, card, dev, channels_last, compile) for d, card in selected]
        dtype = torch.bfloat16 if dev.type == "cuda" or cpu_bf16 else None
        return cls(
            residents,
            dev,
            batch_size,
            decode_workers=decode_workers,
            channels_last=channels_last,
            autocast_dtype=dtype,
            pad_batches=compile,
            worker_setup=worker_setup,
        )

    # --- lifecycle --------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the decode workers (idempotent). The models stay usable in-process."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # --- properties -------------------------------------------------------------------------------------------

    @property
    def cards(self) -> list[ModelCard]:
        return [r.card for r in self._residents]

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def decode_workers(self) -> int:
        return self._decode_workers

    @property
    def model_versions(self) -> str:
        """'name@version,...' sorted by name: stored with every run, so a result traces to its models."""
        return ",".join(f"{r.card.name}@{r.card.version}" for r in self._residents)

    def resident(self, card_name: str) -> Resident:
        """The resident model named ``card_name``; KeyError when none is."""
        for r in self._residents:
            if r.card.name == card_name:
                return r
        raise KeyError(f"no resident model {card_name!r} (resident: {[r.card.name for r in self._residents]})")

    # --- forward ----------------------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._device.type, dtype=self._autocast_dtype)

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        """Host batch → device tensor. On CUDA through a reused pinned buffer, so the copy is a real async DMA.

        Reusing the buffer is safe because every forward ends with a blocking device→host copy of the
        outputs: by the time the next batch overwrites it, the previous transfer has finished.
        """
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self._device.type == "cuda":
            key = tuple(batch.shape[1:])
            rows = max(self._batch_size, len(batch))
            buf = self._pinned.get(key)
            if buf is None or buf.shape[0] < rows:
                buf = torch.empty((rows, *key), dtype=torch.float32, pin_memory=True)
                self._pinned[key] = buf
            staged = buf[: len(batch)]
            staged.copy_(x)
            x = staged.to(self._device, non_blocking=True)
        if self._channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _logits(self, resident: Resident, batch: np.ndarray) -> np.ndarray:
        """float32 logits (N, classes) of one forward call; the caller holds inference_mode."""
        n = len(batch)
        if self._pad_batches and n < self._batch_size:  # one shape for torch.compile: no recompiles
            pad = np.zeros((self._batch_size - n, *batch.shape[1:]), dtype=np.float32)
            batch = np.concatenate([batch, pad])
        x = self._to_device(batch)
        with self._autocast():
            out = resident.runner(x)
        return out[:n].float().cpu().numpy()

    def _gated_logits(self, resident: Resident, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, domain-gate scores) of one eager forward call; the caller holds inference_mode."""
        assert resident.gate is not None
        x = self._to_device(batch)
        with self._autocast():
            out, features = forward_with_features(resident.model, x)
        return out.float().cpu().numpy(), resident.gate.scores(features)

    def forward_only(self, batch: np.ndarray, card_name: str) -> np.ndarray:
        """Bare forward of one resident model on an already preprocessed (N, C, H, W) float32 batch → logits.

        The same host→device copy, memory format, autocast and model (compiled or not) that predict uses, and
        a device sync (the logits come back to the host): the yardstick the benchmark compares the whole
        decode → preprocess → forward path against.
        """
        if batch.ndim != 4:
            raise ValueError(f"expected an (N, C, H, W) batch, got shape {batch.shape}")
        with torch.inference_mode():
            return self._logits(self.resident(card_name), batch)

    def eager_input(self, batch: np.ndarray) -> torch.Tensor:
        """``batch`` on the engine's device in its memory format, as a plain copy (not predict's pinned staging
        buffer): the input of an eager float32 forward with gradients (Grad-CAM, models.explain_engine)."""
        x = torch.from_numpy(batch).to(self._device)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def probabilities(self, card: ModelCard, inputs: np.ndarray) -> tuple[np.ndarray, list[GateVerdict]]:
        """Calibrated probabilities (N, classes) of the resident model ``card`` names on preprocessed inputs, in
        batches of ``batch_size``, and each input's domain-gate verdict: (score, threshold), None without a gate.

        What models.cascade_run.run_cascade reads each model with.
        """
        resident = self.resident(card.name)
        chunks, scores = [], []
        with torch.inference_mode():
            for part in _batches(len(inputs), self._batch_size):
                if resident.gate is None:
                    raw = self._logits(resident, inputs[part])
                else:
                    raw, score = self._gated_logits(resident, inputs[part])
                    scores.append(score)
                probs = torch.softmax(torch.from_numpy(raw) / resident.card.temperature, dim=1)
                chunks.append(probs.numpy().astype(np.float64))
        calibrated = np.concatenate(chunks)
        if resident.gate is None:
            return calibrated, [None] * len(calibrated)
        threshold = resident.gate.threshold
        return calibrated, [(float(score), threshold) for score in np.concatenate(scores)]

    # --- public prediction ------------------------------------------------------------------------------------

    def classify(self, datasets: Sequence[pydicom.Dataset]) -> Classification:
        """The cascade on every dataset: which models apply (and why), and their predictions.

        With decode workers the datasets are pickled to them (~1 ms each, compressed pixels stay compressed).
        """
        return self._run_pipeline([(prepare, ds) for ds in datasets])

    def classify_files(self, paths: Sequence[Path], *, overlays: bool = False) -> Classification:
        """Like :meth:`classify` for DICOM files, read and decoded in the worker pool when there is one.

        ``overlays``: also the key-image overlay of every decided finding (Grad-CAM on the inputs just read, drawn
        on a display image the decode step makes; models.explain_engine.overlays), so nothing is decoded twice.
        Raises what reading raises (FileNotFoundError, pydicom's InvalidDicomError), PixelDecodeError for
        undecodable pixels, DecodeWorkerError when a worker process died.
        """
        return self._run_pipeline([(prepare_file, str(p)) for p in paths], overlays=overlays)

    def predict(self, datasets: Sequence[pydicom.Dataset]) -> list[Prediction]:
        """The predictions of :meth:`classify`, in dataset order, then model name order, then half."""
        return self.classify(datasets).predictions

    def predict_files(self, paths: Sequence[Path]) -> list[Prediction]:
        """The predictions of :meth:`classify_files`."""
        return self.classify_files(paths).predictions

    def _run_pipeline(self, jobs: Sequence[Job], *, overlays: bool = False) -> Classification:
        """Batches of ``batch_size`` images; with a pool, the next batches decode while this one runs forward."""
        batches = [jobs[part] for part in _batches(len(jobs), self._batch_size)]
        plan = replace(self._plan, display_side=KEY_IMAGE_SIDE) if overlays else self._plan
        if self._pool is None:
            prepared = ([fn(arg, plan) for fn, arg in batch] for batch in batches)
            results = [self._cascade(items, overlays) for items in prepared]
        else:
            results = self._run_pooled(self._pool, batches, plan, overlays)
        predictions: list[Prediction] = []
        drawn: dict[int, np.ndarray] = {}
        for r in results:
            drawn.update((len(predictions) + index, rgb) for index, rgb in r.overlays.items())
            predictions += r.predictions
        return Classification(
            predictions=predictions,
            selections={uid: s for r in results for uid, s in r.selections.items()},
            overlays=drawn,
        )

    def _cascade(self, items: Sequence[Prepared], overlays: bool) -> Classification:
        result = run_cascade(self.cards, items, self.probabilities)
        if not overlays:
            return result
        return replace(result, overlays=draw_overlays(self, items, result.predictions))

    def _run_pooled(
        self, pool: DecodePool, batches: Sequence[Sequence[Job]], plan: Plan, overlays: bool
    ) -> list[Classification]:
        # Two batches ahead keep every worker busy while the forward of the current one runs.
        ahead = 2
        pending: deque[tuple[Sequence[Job], list[Future[Prepared]]]] = deque()
        todo = iter(batches)
        out: list[Classification] = []

        def submit_next() -> None:
            batch = next(todo, None)
            if batch is not None:
                pending.append((batch, [pool.submit(job, plan) for job in batch]))

        in_flight: list[Job] = []
        try:
            for _ in range(ahead):
                submit_next()
            while pending:
                batch, futures = pending.popleft()
                submit_next()
                in_flight = [*batch, *(job for queued, _ in pending for job in queued)]
                items = [f.result() for f in futures]
                out.append(self._cascade(items, overlays))
        except BrokenProcessPool as exc:
            raise pool.after_crash(in_flight, plan) from exc
        finally:
            for _, futures in pending:
                for f in futures:
                    f.cancel()
        return out
