"""Load model cards + weights once, then classify batches of datasets on CUDA or CPU.

The engine is resident for the life of the daemon: weights are verified against the card's sha256 before
they are trusted, every model sees the exact preprocessing its card names, and the output is plain
:class:`~models.prediction.Prediction` objects so nothing downstream needs torch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import safetensors.torch
import timm
import torch

from models.card import CardError, ModelCard, Preprocessing, file_sha256, find_cards
from models.prediction import Prediction
from models.preprocess import PixelDecodeError, gray_to_input, to_gray


class NoModelsError(RuntimeError):
    """No model card is installed: the daemon can still receive and keep images, but not classify them."""


@dataclass(frozen=True)
class _Resident:
    card: ModelCard
    model: torch.nn.Module


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


def _cpu_threads() -> int:
    """CPUs this process may run on (cgroup/affinity aware, unlike os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _verified_weights(directory: Path, card: ModelCard) -> Path:
    """The weights file, only if it is exactly the one the card was written for."""
    path = directory / card.weights_file
    if not card.sha256:
        raise CardError(f"model {card.name}: card in {directory} has no sha256; refusing unverified weights")
    if not path.is_file():
        raise CardError(f"model {card.name}: weights file {path} is missing")
    actual = file_sha256(path)
    if actual != card.sha256.lower():
        raise CardError(f"model {card.name}: sha256 of {path} is {actual}, card says {card.sha256}")
    return path


def build_model(card: ModelCard) -> torch.nn.Module:
    """The card's timm architecture, randomly initialised (models.demo builds it the same way)."""
    try:
        return timm.create_model(
            card.arch,
            pretrained=False,
            num_classes=len(card.labels),
            in_chans=card.preprocessing.in_chans,
            **card.arch_kwargs,
        )
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CardError(f"model {card.name}: cannot build timm architecture {card.arch!r}: {exc}") from exc


def _check_card(card: ModelCard) -> None:
    if not card.labels:
        raise CardError(f"model {card.name}: card has no labels")
    if not card.temperature > 0:
        raise CardError(f"model {card.name}: temperature must be positive, not {card.temperature}")
    unknown = set(card.thresholds) - set(card.label_keys)
    if unknown:
        raise CardError(f"model {card.name}: thresholds for unknown labels {sorted(unknown)}")


def _load_one(directory: Path, card: ModelCard, device: torch.device) -> _Resident:
    _check_card(card)
    weights = _verified_weights(directory, card)
    model = build_model(card)
    try:
        state = safetensors.torch.load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, safetensors.SafetensorError) as exc:
        raise CardError(f"model {card.name}: weights {weights} do not fit {card.arch}: {exc}") from exc
    model.to(device).eval()
    return _Resident(card, model)


def _select(models_dir: Path, enabled: Sequence[str]) -> list[tuple[Path, ModelCard]]:
    dirs = find_cards(models_dir)
    if not dirs:
        raise NoModelsError(
            f"no model card (card.json) found under {models_dir}; "
            "`predictd models install-demo` installs an untrained demonstration model"
        )
    found: dict[str, tuple[Path, ModelCard]] = {}
    for directory in dirs:
        card = ModelCard.load(directory)
        if card.name in found:
            raise CardError(f"model name {card.name!r} is used by both {found[card.name][0]} and {directory}")
        found[card.name] = (directory, card)
    if not enabled:
        return [found[name] for name in sorted(found)]
    missing = [name for name in enabled if name not in found]
    if missing:
        installed = sorted(found)
        raise CardError(f"enabled model(s) {missing} not found under {models_dir} (installed: {installed})")
    return [found[name] for name in sorted(set(enabled))]


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class Engine:
    """Resident models. Build with :meth:`load`; :meth:`predict` is not thread-safe (callers hold a lock)."""

    def __init__(self, residents: Sequence[_Resident], device: torch.device, batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, not {batch_size}")
        self._residents = sorted(residents, key=lambda r: r.card.name)
        self._device = device
        self._batch_size = batch_size

    @classmethod
    def load(
        cls, models_dir: Path, enabled: Sequence[str] = (), device: str = "auto", batch_size: int = 16
    ) -> Engine:
        """Every card under ``models_dir`` (or only the ``enabled`` names), weights checked by sha256."""
        models_dir = Path(models_dir)
        selected = _select(models_dir, enabled)
        dev = _resolve_device(device)
        if dev.type == "cpu":
            torch.set_num_threads(_cpu_threads())
        return cls([_load_one(d, card, dev) for d, card in selected], dev, batch_size)

    @property
    def cards(self) -> list[ModelCard]:
        return [r.card for r in self._residents]

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def model_versions(self) -> str:
        """'name@version,...' sorted by name: stored with every run, so a result traces to its models."""
        return ",".join(f"{r.card.name}@{r.card.version}" for r in self._residents)

    def _inputs(self, datasets: Sequence[pydicom.Dataset]) -> dict[Preprocessing, np.ndarray]:
        """One stacked input array per distinct preprocessing; each file is decoded once per VOI choice."""
        preps = {r.card.preprocessing for r in self._residents}
        rows: dict[Preprocessing, list[np.ndarray]] = {p: [] for p in preps}
        for ds in datasets:
            grays: dict[str, np.ndarray] = {}
            for prep in preps:
                if prep.window not in grays:
                    try:
                        grays[prep.window] = to_gray(ds, prep.window)
                    except PixelDecodeError as exc:
                        uid = ds.get("SOPInstanceUID", "<no SOP Instance UID>")
                        raise PixelDecodeError(f"instance {uid}: {exc}") from exc
                rows[prep].append(gray_to_input(grays[prep.window], prep))
        return {p: np.stack(r) for p, r in rows.items()}

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self._device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _probabilities(self, resident: _Resident, inputs: np.ndarray) -> np.ndarray:
        chunks = []
        with torch.inference_mode(), self._autocast():
            for part in _batches(len(inputs), self._batch_size):
                x = torch.from_numpy(inputs[part]).to(self._device, non_blocking=True)
                logits = resident.model(x).float()
                probs = torch.softmax(logits / resident.card.temperature, dim=1)
                chunks.append(probs.cpu().numpy().astype(np.float64))
        return np.concatenate(chunks)

    def predict(self, datasets: Sequence[pydicom.Dataset]) -> list[Prediction]:
        """Every model on every dataset, in dataset order then model name order."""
        if not datasets:
            return []
        inputs = self._inputs(datasets)
        per_model = [self._probabilities(r, inputs[r.card.preprocessing]) for r in self._residents]
        out = []
        for i, ds in enumerate(datasets):
            for resident, probs in zip(self._residents, per_model, strict=True):
                out.append(_prediction(resident.card, ds, probs[i]))
        return out


def _prediction(card: ModelCard, ds: pydicom.Dataset, probs: np.ndarray) -> Prediction:
    keys = card.label_keys
    top = int(np.argmax(probs))
    top_p = float(probs[top])
    label = keys[top] if top_p >= card.thresholds.get(keys[top], 0.0) else Prediction.INDETERMINATE
    return Prediction(
        model_name=card.name,
        model_version=card.version,
        task=card.task,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        label=label,
        probability=top_p,
        probabilities={k: float(p) for k, p in zip(keys, probs, strict=True)},
        laterality=None,
        untrained=card.untrained,
    )
