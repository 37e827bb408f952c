"""Cross-validated training: K members, each trained with one fold of train+val held out, shipped as their ensemble.

Why: with a hundred images a validation split of eleven can neither fit a temperature, nor set a domain-gate
threshold, nor choose between runs. Here every train+val image is held out by exactly one member, so the temperature,
the gate threshold and the figures that choose between runs come from all of them, out of fold, and the ensemble that
runs is the model they describe. The test split is never read. Members keep the weights of the last epoch of their
schedule: choosing an epoch on the fold they are measured on would flatter the out-of-fold figures.

The ensemble's own out-of-fold figures do not exist (each image was seen by K-1 members); the members' stand in for
them, which is conservative: an ensemble is at least as accurate as its average member, and its averaged logits are
less extreme, so the member temperature does not make it overconfident.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from predictd.models.augment import Augmentation
from predictd.models.calibrate import (
    calibration_summary,
    fitted_temperature,
    gate_statistics,
    outlier_inputs,
    outputs,
    write_gate,
)
from predictd.models.card import ModelCard
from predictd.models.data import Record, load_images, manifest_sha256, split
from predictd.models.ensemble import Ensemble, ensemble_state
from predictd.models.gate import DomainGate
from predictd.models.loading import load_verified
from predictd.models.metrics import log_loss, softmax
from predictd.models.train import CHECKPOINT, MODEL_DIR, Trainer, TrainError, TrainOptions, labels_for, write_model_dir


@dataclass
class CrossValResult:
    model_dir: Path
    card: ModelCard
    complete: bool
    folds_done: int


def fold_names(folds: int) -> tuple[str, ...]:
    return tuple(f"fold{k + 1}" for k in range(folds))


def assign_folds(records: Sequence[Record], folds: int, seed: int = 0) -> dict[Path, str]:
    """Fold of each train+val image: whole groups, stratified by label (models.data.split with equal shares)."""
    if folds < 2:
        raise TrainError(f"cross-validation needs at least 2 folds, not {folds}")
    pool = [r for r in records if r.split in ("train", "val")]
    if len({r.group for r in pool}) < folds:
        raise TrainError(f"{len({r.group for r in pool})} groups in train+val cannot fill {folds} folds")
    assigned = split(pool, [1.0] * folds, seed=seed, names=fold_names(folds))
    return {r.path: r.split for r in assigned}


def _fold_records(records: Sequence[Record], folds: dict[Path, str], held_out: str) -> list[Record]:
    """The manifest as one member sees it: its fold is "val", the other folds "train", test stays test."""
    out = []
    for r in records:
        if r.path in folds:
            out.append(replace(r, split="val" if folds[r.path] == held_out else "train"))
        else:
            out.append(r)
    return out


def _member_done(run: Path) -> bool:
    card = run / MODEL_DIR / "card.json"
    return card.is_file() and bool(ModelCard.load(run / MODEL_DIR).training.get("complete"))


def train_crossval(
    card: ModelCard,
    records: Sequence[Record],
    out: Path,
    options: TrainOptions,
    folds: int = 5,
    data_root: Path | None = None,
    progress: Callable[[str], None] | None = None,
    on_batch: Callable[[str, int, int], None] | None = None,
) -> CrossValResult:
    """Train (or continue) every member in ``out``/foldK, then write the ensemble to ``out``/model.

    Runs that stopped for the time budget continue where they stopped when called again with the same arguments.
    """
    say = progress or (lambda message: None)
    out = Path(out)
    fold_of = assign_folds(records, folds, options.seed)
    member_options = replace(options, keep="last", coverage=0.0, patience=options.epochs + options.head_epochs + 1)
    started = dt.datetime.now(dt.UTC)
    for k, name in enumerate(fold_names(folds)):
        run = out / name
        if _member_done(run):
            continue
        say(f"member {k + 1} of {folds}: {name} held out")
        fold_records = _fold_records(records, fold_of, name)
        budget = _remaining(options.max_minutes, started)
        if budget is not None and budget <= 0:
            return CrossValResult(out / MODEL_DIR, card, False, k)
        if (run / CHECKPOINT).is_file():
            trainer = Trainer.resume(fold_records, run, data_root, say, max_minutes=budget)
        else:
            opts = replace(member_options, seed=options.seed + k, max_minutes=budget)
            trainer = Trainer(card, fold_records, run, opts, data_root, say, on_batch)
        trainer.on_batch = on_batch or trainer.on_batch
        trainer.run()
        if not _member_done(run):
            return CrossValResult(out / MODEL_DIR, card, False, k)
    result = _assemble(card, records, out, options, fold_of, data_root)
    say(f"ensemble of {folds} written to {result.model_dir} (temperature {result.card.temperature:.2f})")
    return result


def _remaining(max_minutes: float | None, started: dt.datetime) -> float | None:
    if max_minutes is None:
        return None
    return max_minutes - (dt.datetime.now(dt.UTC) - started).total_seconds() / 60.0


def _assemble(
    card: ModelCard,
    records: Sequence[Record],
    out: Path,
    options: TrainOptions,
    fold_of: dict[Path, str],
    data_root: Path | None,
) -> CrossValResult:
    """Members → one ensemble with the temperature and gate threshold of their out-of-fold images."""
    card = replace(card, labels=labels_for(card, records))
    pool = [r for r in records if r.path in fold_of]
    x = torch.from_numpy(load_images(pool, card.preprocessing))
    y = np.array([card.label_keys.index(r.label) for r in pool])
    names = fold_names(len(set(fold_of.values())))
    cpu = torch.device("cpu")
    aug = Augmentation(hflip=not card.bilateral)
    outliers = outlier_inputs(options.outliers, card.preprocessing)
    states, gates, member_cards = [], [], []
    oof_logits = np.zeros((len(pool), len(card.labels)))
    oof_distances, oof_odds = np.zeros(len(pool)), np.zeros(len(pool))
    for name in names:
        member_card, model = load_verified(out / name / MODEL_DIR, "cpu")
        held = np.array([fold_of[r.path] == name for r in pool])
        train_idx = torch.from_numpy(np.flatnonzero(~held))
        y_train = torch.from_numpy(y[~held])
        gate = gate_statistics(model, x[train_idx], y_train, card.preprocessing, cpu, aug=aug, outliers=outliers)
        reader = Ensemble([model], options.tta_zooms) if options.tta_zooms != (1.0,) else model  # as it will run
        held_out = outputs(reader, x[torch.from_numpy(np.flatnonzero(held))], cpu)
        oof_logits[held] = held_out.logits
        oof_distances[held], oof_odds[held] = gate.distances(held_out.features), gate.odds(held_out.features)
        states.append({key: value.float() for key, value in model.state_dict().items()})
        gates.append(gate)
        member_cards.append(member_card)
    temperature = fitted_temperature(oof_logits, y)
    gate = DomainGate.join(gates).with_thresholds(oof_distances, oof_odds, options.coverage)
    oof = calibration_summary(oof_logits, y, temperature, f"out-of-fold predictions of {len(names)} members")
    oof["log_loss"] = log_loss(y, softmax(oof_logits, temperature))
    passed = (oof_distances <= gate.distance_threshold) & (oof_odds <= gate.odds_threshold)
    oof["gate_passed"] = float(np.mean(passed))
    ensemble = replace(
        member_cards[0],
        members=len(names),
        tta_zooms=options.tta_zooms,
        temperature=temperature,
        thresholds={key: options.threshold for key in card.label_keys},
        training=_provenance(card, records, options, member_cards, oof, data_root),
    )
    model_dir = out / MODEL_DIR
    model_dir.mkdir(parents=True, exist_ok=True)
    fitted_on = (
        "each member: its training folds (with augmented copies); threshold: the out-of-fold score of every "
        "train+val image"
    )
    ensemble = write_gate(model_dir, ensemble, gate, options.coverage, fitted_on, len(pool))
    written = write_model_dir(model_dir, ensemble, ensemble_state(states))
    return CrossValResult(model_dir, written, True, len(names))


def _provenance(
    card: ModelCard,
    records: Sequence[Record],
    options: TrainOptions,
    members: Sequence[ModelCard],
    oof: dict[str, Any],
    data_root: Path | None,
) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    for r in records:
        counts.setdefault(r.split or "unassigned", {}).setdefault(r.label, 0)
        counts[r.split or "unassigned"][r.label] += 1
    return {
        "data_sha256": manifest_sha256(records, data_root),
        "split_counts": counts,
        "seed": options.seed,
        "options": {k: v for k, v in asdict(options).items() if k not in ("device", "max_minutes")},
        "cross_validation": {
            "folds": len(members),
            "kept": "last epoch of each member",
            "epochs_run": [m.training.get("epochs_run") for m in members],
        },
        "calibration": oof,
        "temperature_fitted_on": "out-of-fold",
        "metrics": {"oof": {"split": "train+val out of fold", "n": oof["n"], "accuracy": oof["accuracy"]}},
        "complete": True,
        "trained": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "timm": timm.__version__,
    }
