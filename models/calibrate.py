"""What makes a trained network's answers honest: the temperature and the domain gate, fitted on images it did not
train on, and written into its model directory.

Shared by ``predictd train`` (a single network: gate statistics from the train split, threshold and temperature from
the validation split), cross-validated training (models.crossval: out-of-fold images of every member) and
``predictd calibrate`` (a model trained elsewhere: its weights are left as they are, only the card and the gate file
change, so their sha256 say what was calibrated).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from predictd.models.augment import Augmentation, augment
from predictd.models.card import ModelCard, Preprocessing, file_sha256
from predictd.models.data import Record, load_images, read_manifest
from predictd.models.features import Features, concat, forward_with_features
from predictd.models.gate import DEFAULT_COVERAGE, GATE_FILE, DomainGate
from predictd.models.loading import load_verified_resident
from predictd.models.metrics import expected_calibration_error, fit_temperature, softmax

TEMPERATURE_RANGE = (0.5, 5.0)
"""Bounds of the fitted temperature: a few dozen held-out images, often all classified right, would otherwise drive
it towards zero and make every probability 1.0."""
AUGMENTED_COPIES = 4
"""Augmented copies of each training image added to the gate's statistics: real CR carries markers, bars, noise and
other framings that a hundred web JPEGs do not show, and the gate must not refuse those."""


@dataclass(frozen=True)
class Outputs:
    """A network's logits (N, K) and stage features on a set of inputs."""

    logits: np.ndarray
    features: Features


@torch.no_grad()
def outputs(model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch: int = 32) -> Outputs:
    """Logits and features of ``model`` (eval mode, float32) on ``x``, in batches."""
    model.eval()
    logits, parts = [], []
    for chunk in x.split(batch):
        out, feats = forward_with_features(model, chunk.to(device))
        logits.append(out.float().cpu().numpy().astype(np.float64))
        parts.append(feats)
    return Outputs(np.concatenate(logits), concat(parts))


def gate_statistics(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    prep: Preprocessing,
    device: torch.device,
    *,
    aug: Augmentation | None = None,
    seed: int = 0,
    outliers: torch.Tensor | None = None,
) -> DomainGate:
    """Gate statistics (per network of an ensemble) from training inputs and ``AUGMENTED_COPIES`` augmented copies;
    with ``outliers`` (inputs of another domain, plus one augmented copy), each network's outlier classifier too.
    The thresholds are left open: they come from held-out images (:meth:`DomainGate.with_thresholds`)."""
    gen = torch.Generator().manual_seed(seed)
    aug = aug or Augmentation()
    xs = [x] + [augment(x, prep, aug, gen) for _ in range(AUGMENTED_COPIES)]
    feats = outputs(model, torch.cat(xs), device).features
    labels = np.tile(y.numpy(), len(xs))
    others: list[list[np.ndarray]] | list[None] = [None] * len(feats)
    if outliers is not None and len(outliers):
        others = outputs(model, torch.cat([outliers, augment(outliers, prep, aug, gen)]), device).features
    return DomainGate.join([DomainGate.fit(f, labels, o) for f, o in zip(feats, others, strict=True)])


def outlier_inputs(manifests: Sequence[str | Path], prep: Preprocessing) -> torch.Tensor | None:
    """The train and val images of the outlier manifests as network inputs (their test images stay unseen)."""
    chosen = [r for m in manifests for r in read_manifest(Path(m)) if r.split in ("train", "val")]
    return torch.from_numpy(load_images(chosen, prep)) if chosen else None


def fitted_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature fitted on held-out logits, within TEMPERATURE_RANGE; 1.0 when every held-out image is right.

    With no error the likelihood only grows as the temperature shrinks: the fit would say "sharpen without limit" on no
    evidence, so the probabilities are left as the network gives them.
    """
    if len(y) == 0 or bool((logits.argmax(1) == y).all()):
        return 1.0
    low, high = TEMPERATURE_RANGE
    return fit_temperature(logits, y, lower=low, upper=high)


def calibration_summary(logits: np.ndarray, y: np.ndarray, temperature: float, how: str) -> dict[str, Any]:
    """What the card records about its calibration: on what, how many, and ECE before and after."""
    return {
        "method": "temperature scaling",
        "fitted_on": how,
        "n": len(y),
        "temperature": temperature,
        "ece_before": expected_calibration_error(y, softmax(logits, 1.0)) if len(y) else None,
        "ece_after": expected_calibration_error(y, softmax(logits, temperature)) if len(y) else None,
        "accuracy": float((logits.argmax(1) == y).mean()) if len(y) else None,
    }


def write_gate(
    directory: Path, card: ModelCard, gate: DomainGate, coverage: float, fitted_on: str, n_reference: int
) -> ModelCard:
    """Save the gate file beside the weights and return the card that names it (the caller saves the card)."""
    path = Path(directory) / GATE_FILE
    gate.save(path)
    spec = {
        "method": gate.method,
        "file": GATE_FILE,
        "sha256": file_sha256(path),
        "distance_threshold": gate.distance_threshold,
        "odds_threshold": gate.odds_threshold if gate.classifiers else None,
        "coverage": coverage,
        "fitted_on": fitted_on,
        "n_reference": n_reference,
    }
    return replace(card, gate=spec)


def calibrate_single(
    model: torch.nn.Module,
    card: ModelCard,
    train: tuple[torch.Tensor, torch.Tensor],
    held_out: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
    *,
    coverage: float = DEFAULT_COVERAGE,
    temperature: bool = True,
    seed: int = 0,
    outliers: torch.Tensor | None = None,
) -> tuple[ModelCard, DomainGate]:
    """Gate statistics from ``train`` (and ``outliers``); thresholds (and temperature, unless False) from
    ``held_out``."""
    gate = gate_statistics(model, *train, card.preprocessing, device, seed=seed, outliers=outliers)
    x_held, y_held = held_out
    if len(y_held) == 0:
        raise ValueError("no held-out (validation) images to choose the gate threshold from")
    out = outputs(model, x_held, device)
    gate = gate.with_thresholds(gate.distances(out.features), gate.odds(out.features), coverage)
    y = y_held.numpy()
    t = fitted_temperature(out.logits, y) if temperature else card.temperature
    calibration = calibration_summary(out.logits, y, t, "validation split")
    training = {**card.training, "calibration": calibration, "temperature_fitted_on": "val" if t != 1.0 else None}
    return replace(card, temperature=t, training=training), gate


def calibrate_model(
    model_dir: Path,
    records: Sequence[Record],
    *,
    coverage: float = DEFAULT_COVERAGE,
    temperature: bool = True,
    outliers: Sequence[str | Path] = (),
) -> ModelCard:
    """``predictd calibrate``: gate statistics from the manifest's train split (and the outlier manifests' train and
    val images), thresholds (and temperature) from val.

    The weights stay as they are (their sha256 too); the gate file and the card are rewritten.
    """
    resident = load_verified_resident(Path(model_dir))
    card, model = resident.card, resident.model
    splits = {}
    for name in ("train", "val"):
        chosen = [r for r in records if r.split == name]
        if not chosen:
            raise ValueError(f"the manifest has no {name!r} images: calibration needs train and val")
        unknown = sorted({r.label for r in chosen} - set(card.label_keys))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the model's {card.label_keys}")
        x = torch.from_numpy(load_images(chosen, card.preprocessing))
        splits[name] = (x, torch.tensor([card.label_keys.index(r.label) for r in chosen]))
    cpu = torch.device("cpu")
    others = outlier_inputs(outliers, card.preprocessing)
    card, gate = calibrate_single(model, card, splits["train"], splits["val"], cpu, coverage=coverage,
                                  temperature=temperature, outliers=others)  # fmt: skip
    fitted_on = "train split (gate statistics, with augmented copies); threshold on the validation split"
    card = write_gate(Path(model_dir), card, gate, coverage, fitted_on, len(splits["val"][1]))
    card.save(Path(model_dir))
    return card
