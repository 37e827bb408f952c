"""The files of a run folder: checkpoint, CSV log, best weights, and the model directory it ends with."""

from __future__ import annotations

import csv
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from predictd.models.card import ModelCard, file_sha256

CHECKPOINT = "checkpoint.pt"
LOG_CSV = "log.csv"
BEST_WEIGHTS = "best.safetensors"
MODEL_DIR = "model"
LOG_COLUMNS = ("stage", "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")


def save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def append_log(out: Path, row: dict[str, Any]) -> None:
    path = out / LOG_CSV
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def write_model_dir(directory: Path, card: ModelCard, state: dict[str, torch.Tensor]) -> ModelCard:
    """Weights first, then the card with their sha256: a directory with a card is what counts as installed."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / card.weights_file
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    card = replace(card, sha256=file_sha256(weights))
    card.save(directory)
    return card
