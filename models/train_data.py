"""A training run's images in memory and how its batches are drawn: decoded once through the card's preprocessing,
class-balanced sampling in whole batches, and losses and logits on a split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from predictd.models.card import Label, ModelCard
from predictd.models.data import Record, load_images
from predictd.models.train_options import TrainError, TrainOptions


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor


def labels_for(card: ModelCard, records: Sequence[Record]) -> tuple[Label, ...]:
    """The card's labels when the data uses only those; the data's own (sorted) when the card names none."""
    seen = sorted({r.label for r in records})
    if not card.labels:
        return tuple(Label(key, key) for key in seen)
    unknown = [label for label in seen if label not in card.label_keys]
    if unknown:
        raise TrainError(f"labels {unknown} of the data are not in card {card.name} ({card.label_keys})")
    return card.labels


def load_split(records: Sequence[Record], card: ModelCard, split: str) -> Split:
    """Decode a split's images once, through the card's preprocessing (the same as inference)."""
    index = {key: i for i, key in enumerate(card.label_keys)}
    chosen = [r for r in records if r.split == split]
    if not chosen:
        return Split(torch.zeros((0, card.preprocessing.in_chans, 1, 1)), torch.zeros(0, dtype=torch.long))
    x = torch.from_numpy(load_images(chosen, card.preprocessing))
    y = torch.tensor([index[r.label] for r in chosen], dtype=torch.long)
    return Split(x, y)


def class_weights(y: torch.Tensor, k: int) -> torch.Tensor:
    counts = torch.bincount(y, minlength=k).float()
    return torch.where(counts > 0, 1.0 / counts.clamp(min=1), torch.zeros_like(counts))[y]


def usable(n: int, batch_size: int) -> int:
    """Images drawn per epoch: whole batches only (BatchNorm needs a few images), or all when fewer than one batch."""
    return n - n % batch_size if n > batch_size else n


def draw_batches(train: Split, k: int, options: TrainOptions, gen: torch.Generator) -> list[torch.Tensor]:
    n = train.y.numel()
    if options.balanced:
        order = torch.multinomial(class_weights(train.y, k), n, replacement=True, generator=gen)
    else:
        order = torch.randperm(n, generator=gen)
    return list(order[: usable(n, options.batch_size)].split(options.batch_size))


def evaluate_loss(model: torch.nn.Module, split: Split, device: torch.device, batch: int) -> tuple[float, float]:
    if split.y.numel() == 0:
        return math.nan, math.nan
    logits = predict_logits(model, split.x, device, batch)
    loss = F.cross_entropy(logits, split.y).item()
    acc = (logits.argmax(1) == split.y).float().mean().item()
    return loss, acc


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch: int = 32) -> torch.Tensor:
    """Float32 logits on the CPU for a tensor of inputs (eval mode, in batches)."""
    model.eval()
    outs = [model(chunk.to(device)).float().cpu() for chunk in x.split(batch)]
    return torch.cat(outs) if outs else torch.zeros((0, 0))
