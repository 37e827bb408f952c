"""Measure a model directory on one split of a manifest: what the papers report, as a JSON-ready dict.

The model is loaded as the engine loads it (weights checked against the card's sha256) and every image goes through
the card's preprocessing, so the figures describe what the daemon would say. Probabilities are temperature-scaled
with the card's temperature (fitted on the validation split at training time, never on the split measured here).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.card import ModelCard
from models.data import Record, load_images, manifest_sha256
from models.loading import load_verified
from models.metrics import evaluate, expected_calibration_error, reader_study, roc_curve, softmax
from models.train import predict_logits

SMALL_SPLIT = 50
"""Below this many images a report warns that its confidence intervals are wide."""


class EvaluationError(ValueError):
    """The split is empty or holds labels the model does not know."""


def _none_if_nan(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in values]


def _readers(chosen: Sequence[Record], labels: Sequence[str], predicted: Sequence[str]) -> dict[str, Any] | None:
    """The reader comparison when at least two reader columns label every case of the split."""
    names = sorted({name for r in chosen for name in r.readers})
    complete = [n for n in names if all(r.readers.get(n, "") in labels for r in chosen)]
    if len(complete) < 2:
        return None
    return reader_study({n: [r.readers[n] for r in chosen] for n in complete}, predicted, labels)


def _calibration(card: ModelCard, y: np.ndarray, logits: np.ndarray) -> dict[str, Any]:
    return {
        "temperature": card.temperature,
        "fitted_on": card.training.get("temperature_fitted_on"),
        "ece_before": expected_calibration_error(y, softmax(logits, 1.0)),
        "ece_after": expected_calibration_error(y, softmax(logits, card.temperature)),
    }


def evaluate_model(
    model_dir: Path,
    records: Sequence[Record],
    split: str = "test",
    *,
    data_root: Path | None = None,
    device: str = "cpu",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The :func:`models.metrics.evaluate` report of ``model_dir`` on ``split`` ("all": every record), plus ROC curves,
    calibration, the reader comparison (when reader columns exist), the indeterminate rate and each case's result."""
    card, model = load_verified(Path(model_dir), device)
    chosen = [r for r in records if split == "all" or r.split == split]
    if not chosen:
        raise EvaluationError(f"the manifest has no images in split {split!r}")
    labels = card.label_keys
    unknown = sorted({r.label for r in chosen} - set(labels))
    if unknown:
        raise EvaluationError(f"labels {unknown} are not among the model's {labels}")
    x = torch.from_numpy(load_images(chosen, card.preprocessing))
    logits = predict_logits(model, x, torch.device(device)).numpy().astype(np.float64)
    y = np.array([labels.index(r.label) for r in chosen], dtype=np.int64)
    probs = softmax(logits, card.temperature)
    report = evaluate(y, probs, labels, n_boot=n_boot, seed=seed)
    predicted = [labels[i] for i in probs.argmax(axis=1)]
    top = probs.max(axis=1)
    below = np.array([top[i] < card.thresholds.get(predicted[i], 0.0) for i in range(len(chosen))])

    report["roc"] = {}
    for c, label in enumerate(labels):
        fpr, tpr, _ = roc_curve(y == c, probs[:, c])
        report["roc"][label] = {"fpr": _none_if_nan(fpr), "tpr": _none_if_nan(tpr)}
    report["model"] = {
        "name": card.name,
        "version": card.version,
        "arch": card.arch,
        "task": card.task,
        "input_size": card.preprocessing.input_size,
        "sha256": card.sha256,
    }
    report["data"] = {"split": split, "sha256": manifest_sha256(chosen, data_root), "n": len(chosen)}
    report["calibration"] = _calibration(card, y, logits)
    report["temperature"] = card.temperature
    report["indeterminate_rate"] = float(below.mean())
    report["readers"] = _readers(chosen, labels, predicted)
    report["cases"] = [
        {"image": r.path.name, "label": r.label, "predicted": p, "probability": round(float(t), 4)}
        for r, p, t in zip(chosen, predicted, top, strict=True)
    ]
    report["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report["warnings"] = (
        [f"only {len(chosen)} images in split {split!r}: the confidence intervals are wide"]
        if len(chosen) < SMALL_SPLIT
        else []
    )
    return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures a card records: accuracy, kappa, macro F1 (with CIs), ECE, log loss, n, split."""
    return {
        "split": report.get("data", {}).get("split"),
        "n": report["n"],
        "accuracy": report["accuracy"],
        "kappa": report["kappa"],
        "macro_f1": report["macro_f1"],
        "ece": report["ece"],
        "log_loss": report["log_loss"],
    }
