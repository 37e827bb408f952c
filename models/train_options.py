"""What a training run is asked to do and what it gives back: shared by models.train and models.crossval."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from predictd.models.card import ModelCard
from predictd.models.gate import DEFAULT_COVERAGE


class TrainError(ValueError):
    """The data, the card or a checkpoint cannot be trained from as asked."""


@dataclass(frozen=True)
class TrainOptions:
    head_epochs: int = 4
    """Head-only epochs (with ``init`` only); then ``epochs`` of the whole network (defaults of the paper)."""
    epochs: int = 50
    batch_size: int = 16
    lr: float = 2e-3
    """Peak one-cycle learning rate of the whole-network stage (the head stage peaks at 5x this)."""
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    patience: int = 12
    """Stop after this many whole-network epochs without a lower validation loss."""
    seed: int = 0
    balanced: bool = True
    """Draw each batch with equal chances per class (small sets are rarely balanced)."""
    augment: bool = True
    hflip: bool | None = None
    """None: flip unless the card is bilateral (a hip half keeps its side)."""
    device: str = "auto"
    amp: bool = True
    """bf16 autocast on a GPU; ignored on CPU."""
    init: str | None = None
    """Local pretrained weights (safetensors or a timm/torch checkpoint), or a timm model name (needs the network)."""
    threshold: float = 0.5
    """Per-class minimum calibrated probability written into the card; below it the result is indeterminate."""
    max_minutes: float | None = None
    """Stop (with a checkpoint) at this wall-clock budget, within an epoch if need be; resume continues. The best
    model so far is written either way."""
    keep: str = "best"
    """Weights of the model directory: "best" (lowest validation loss) or "last" (the end of the schedule; what
    cross-validation keeps, so that out-of-fold figures are not chosen on the fold they measure)."""
    coverage: float = DEFAULT_COVERAGE
    """Share of validation images the domain gate lets through (its threshold); 0 fits no gate."""
    outliers: tuple[str, ...] = ()
    """Manifests of images this model must not label (outlier exposure, Hendrycks et al. 2019): their train and val
    images, augmented, are pushed towards a uniform answer, so that a radiograph of another body part lands far from
    every class. Their test images stay unseen, to measure the refusals on. Each batch adds half as many outliers."""
    outlier_weight: float = 0.5
    tta_zooms: tuple[float, ...] = (1.0,)
    """Cross-validated ensembles: central zooms whose logits are averaged at test time (models.ensemble); the
    out-of-fold logits that fit the temperature are taken the same way."""


@dataclass
class TrainResult:
    model_dir: Path
    card: ModelCard
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)
