"""Measure a model directory on one split of a manifest: what the papers report, as a JSON-ready dict.

The model is loaded as the engine loads it (weights checked against the card's sha256) and every image goes through
the card's preprocessing, so the figures describe what the daemon would say. Probabilities are temperature-scaled
with the card's temperature (fitted on the validation split at training time, never on the split measured here).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from predictd.models.calibrate import outputs
from predictd.models.card import ModelCard
from predictd.models.cascade import reads_modality
from predictd.models.content_check import content_problem
from predictd.models.data import Record, load_images, manifest_sha256
from predictd.models.features import Features
from predictd.models.gate import DomainGate
from predictd.models.loading import load_verified_resident
from predictd.models.metrics import evaluate, expected_calibration_error, reader_study, roc_curve, softmax
from predictd.models.preprocess import gray_to_input
from predictd.models.probes import Probe

SMALL_SPLIT = 50
"""Below this many images a report warns that its confidence intervals are wide."""
CONFIDENT = 0.9
"""An out-of-domain image labelled with at least this probability is the failure the domain gate exists to prevent."""


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
    resident = load_verified_resident(Path(model_dir), device)
    card, model = resident.card, resident.model
    chosen = [r for r in records if split == "all" or r.split == split]
    if not chosen:
        raise EvaluationError(f"the manifest has no images in split {split!r}")
    labels = card.label_keys
    unknown = sorted({r.label for r in chosen} - set(labels))
    if unknown:
        raise EvaluationError(f"labels {unknown} are not among the model's {labels}")
    x = torch.from_numpy(load_images(chosen, card.preprocessing))
    out = outputs(model, x, torch.device(device))
    logits = out.logits
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
    scores = resident.gate.scores(out.features) if resident.gate is not None else None
    report["domain_gate"] = _gate_on_split(card, resident.gate, out.features, y, probs) if resident.gate else None
    report["cases"] = [
        {"image": r.path.name, "label": r.label, "predicted": p, "probability": round(float(t), 4)}
        | ({"gate_score": round(float(scores[i]), 4)} if scores is not None else {})
        for i, (r, p, t) in enumerate(zip(chosen, predicted, top, strict=True))
    ]
    report["created"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report["warnings"] = report_warnings(report, y, split)
    return report


def _gate_on_split(
    card: ModelCard, gate: DomainGate, features: Features, y: np.ndarray, probs: np.ndarray
) -> dict[str, Any]:
    """Coverage (share of in-domain images the gate lets through) and the accuracy on those it let through."""
    passed = gate.passes(gate.scores(features))
    by_distance = gate.distances(features) <= gate.distance_threshold
    correct = probs.argmax(axis=1) == y
    return {
        "method": gate.method,
        "distance_threshold": gate.distance_threshold,
        "odds_threshold": gate.odds_threshold if gate.classifiers else None,
        "coverage_target": card.gate.get("coverage"),
        "coverage": float(passed.mean()),
        "coverage_distance_only": float(by_distance.mean()),
        "n_assessed": int(passed.sum()),
        "accuracy_assessed": float(correct[passed].mean()) if passed.any() else None,
    }


def report_warnings(report: dict[str, Any], y: np.ndarray, split: str) -> list[str]:
    """What a reader of the figures must know before trusting them."""
    out = []
    n = len(y)
    if n < SMALL_SPLIT:
        out.append(f"only {n} images in split {split!r}: the confidence intervals are wide")
    majority = float(np.bincount(y).max() / n)
    accuracy = report["accuracy"]["value"]
    if accuracy is not None and accuracy <= majority:
        out.append(
            f"accuracy {accuracy:.3f} is no better than always answering the most frequent class ({majority:.3f})"
        )
    calibration = report["calibration"]
    before, after = calibration["ece_before"], calibration["ece_after"]
    if before is not None and after is not None and after > before:
        out.append(
            f"the temperature made calibration worse on this split (ECE {calibration['ece_before']:.3f} → "
            f"{calibration['ece_after']:.3f})"
        )
    undefined = [label for label, c in report["per_class"].items() if c["precision"]["value"] is None]
    if undefined:
        out.append(f"never predicted, so precision is undefined (n/a): {', '.join(undefined)}")
    return out


def evaluate_ood(model_dir: Path, probes: Sequence[Probe], *, device: str = "cpu") -> dict[str, Any]:
    """How the model treats images it must refuse: the share refused, and any labelled with probability ≥ 0.9.

    Refused as the daemon refuses, first reason first: routing (a DICOM probe of a modality the card does not read,
    models.cascade), the content check (no radiograph in the pixels, models.content_check), the domain gate.
    ``refused_pixels`` leaves routing out: what the pixels alone get, as for a mislabelled or untagged image.
    """
    resident = load_verified_resident(Path(model_dir), device)
    card = resident.card
    if not probes:
        raise EvaluationError("no out-of-domain probes to evaluate")
    x = torch.from_numpy(np.stack([gray_to_input(p.gray, card.preprocessing) for p in probes]))
    out = outputs(resident.model, x, torch.device(device))
    probs = softmax(out.logits, card.temperature)
    top = probs.max(axis=1)
    gate = resident.gate
    scores = gate.scores(out.features) if gate is not None else np.full(len(probes), -math.inf)
    by_gate = ~gate.passes(scores) if gate is not None else np.zeros(len(probes), dtype=bool)
    by_content = np.array([content_problem(p.gray) is not None for p in probes])
    by_routing = np.array([not reads_modality(card, p.modality) for p in probes])
    refused = by_routing | by_content | by_gate
    why = np.where(by_routing, "routing", np.where(by_content, "content check", np.where(by_gate, "gate", "")))
    labelled = ~refused & np.array([top[i] >= card.thresholds.get(card.label_keys[int(probs[i].argmax())], 0.0)
                                    for i in range(len(probes))])  # fmt: skip
    by_category: dict[str, dict[str, Any]] = {}
    for probe, was_refused in zip(probes, refused, strict=True):
        entry = by_category.setdefault(probe.category, {"n": 0, "refused": 0})
        entry["n"] += 1
        entry["refused"] += int(was_refused)
    return {
        "n": len(probes),
        "refused": float(refused.mean()),
        "refused_pixels": float((by_content | by_gate).mean()),
        "refused_by": {reason: int((why == reason).sum()) for reason in ("routing", "content check", "gate")},
        "labelled": int(labelled.sum()),
        "labelled_confident": int((labelled & (top >= CONFIDENT)).sum()),
        "max_probability_labelled": float(top[labelled].max()) if labelled.any() else None,
        "by_category": by_category,
        "cases": [
            {
                "category": p.category,
                "image": p.name,
                "gate_score": _finite(s),
                "refused": bool(r),
                "refused_by": w or None,
                "predicted": card.label_keys[int(pr.argmax())],
                "probability": round(float(pr.max()), 4),
            }
            for p, s, r, w, pr in zip(probes, scores, refused, why, probs, strict=True)
        ],
    }


def _finite(value: float) -> float | None:
    return round(float(value), 4) if math.isfinite(value) else None


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
