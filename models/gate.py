"""The domain gate: does an image look like the images a model was trained on? If not, the model gives no label.

Method (chosen by measuring it on the shipped models, see models/shipped/README.md): class-conditional Mahalanobis
distance (Lee et al. 2018) on the spatially pooled features at the end of every stage (models.features). Per stage,
the class means and one shared covariance (Ledoit-Wolf shrinkage: a few dozen images per class cannot estimate a
384 x 384 covariance alone) come from the training images; an image's stage distance is its squared distance to the
nearest class mean, expressed as ``log(distance / median training distance)`` so that stages compare; the image's
score is the largest stage score. Early stages catch what is not a radiograph at all (blank, noise, text), the last
ones what is a radiograph of something else. For an ensemble each member scores with its own statistics and the
scores are averaged.

The threshold is a quantile of scores of images the network never trained on (out-of-fold images of a cross-validated
run, or the validation split): with ``coverage`` 0.95, 95% of those pass. Energy and maximum-softmax scores were
measured too and lost (AUROC about 0.5 against out-of-domain images on the hip model): a network trained from scratch on
a hundred images is as confident on noise as on a pelvis.

Pure numpy at inference; scikit-learn's LedoitWolf only when fitting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

GATE_FILE = "gate.safetensors"
METHOD = "mahalanobis-stages"
DEFAULT_COVERAGE = 0.95


class GateError(ValueError):
    """A gate file that does not fit its card or its model's features."""


@dataclass(frozen=True)
class StageStats:
    """One stage of one network: class means (K, D), shared precision (D, D), median training distance."""

    means: np.ndarray
    precision: np.ndarray
    reference: float

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row of ``features`` (N, D) to its nearest class mean."""
        if features.shape[1] != self.means.shape[1]:
            raise GateError(f"features have {features.shape[1]} dimensions, the gate {self.means.shape[1]}")
        diff = features[:, None, :] - self.means[None, :, :]
        return np.asarray(np.einsum("nkd,de,nke->nk", diff, self.precision, diff).min(axis=1))

    def scores(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(np.log(np.maximum(self.distances(features), 1e-12) / self.reference))


def fit_stage(features: np.ndarray, y: np.ndarray) -> StageStats:
    """Class means and the Ledoit-Wolf shrunk precision of the class-centred training features."""
    from sklearn.covariance import LedoitWolf  # only when fitting: the daemon never imports scikit-learn

    classes = np.unique(y)
    means = np.stack([features[y == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, y)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    provisional = StageStats(means, precision, 1.0)
    reference = float(np.median(provisional.distances(features)))
    return StageStats(means, precision, max(reference, 1e-12))


@dataclass(frozen=True)
class DomainGate:
    """Per member, per stage statistics and the score above which an image is refused."""

    members: tuple[tuple[StageStats, ...], ...]
    threshold: float = float("inf")

    @classmethod
    def fit(cls, features: Sequence[np.ndarray], y: np.ndarray) -> DomainGate:
        """One member's gate from its training features (features[stage]: (N, D)) and their class indices."""
        return cls((tuple(fit_stage(np.asarray(f), y) for f in features),))

    @classmethod
    def join(cls, gates: Sequence[DomainGate], threshold: float) -> DomainGate:
        """The members' gates as one ensemble gate with the given threshold."""
        return cls(tuple(m for g in gates for m in g.members), threshold)

    def member_scores(self, features: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        """(members, N): each member's score (its largest stage score) on its own features."""
        if len(features) != len(self.members):
            raise GateError(f"features of {len(features)} networks for a gate of {len(self.members)}")
        rows = []
        for stats, feats in zip(self.members, features, strict=True):
            if len(feats) != len(stats):
                raise GateError(f"features of {len(feats)} stages for a gate of {len(stats)}")
            rows.append(np.max([s.scores(np.asarray(f)) for s, f in zip(stats, feats, strict=True)], axis=0))
        return np.stack(rows)

    def scores(self, features: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        """(N,): the members' scores averaged; higher is less like the training images."""
        return np.asarray(self.member_scores(features).mean(axis=0))

    def passes(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores <= self.threshold)

    def save(self, path: Path) -> None:
        tensors: dict[str, np.ndarray] = {"threshold": np.array([self.threshold])}
        for m, stats in enumerate(self.members):
            for s, stage in enumerate(stats):
                key = f"m{m}.s{s}"
                tensors[f"{key}.means"] = stage.means.astype(np.float32)
                tensors[f"{key}.precision"] = stage.precision.astype(np.float32)
                tensors[f"{key}.reference"] = np.array([stage.reference])
        save_file(tensors, str(path))

    @classmethod
    def load(cls, path: Path) -> DomainGate:
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            raise GateError(f"cannot read gate file {path}: {exc}") from exc
        members: list[tuple[StageStats, ...]] = []
        m = 0
        while f"m{m}.s0.means" in tensors:
            stages: list[StageStats] = []
            s = 0
            while f"m{m}.s{s}.means" in tensors:
                key = f"m{m}.s{s}"
                stages.append(
                    StageStats(
                        tensors[f"{key}.means"].astype(np.float64),
                        tensors[f"{key}.precision"].astype(np.float64),
                        float(tensors[f"{key}.reference"][0]),
                    )
                )
                s += 1
            members.append(tuple(stages))
            m += 1
        if not members or "threshold" not in tensors:
            raise GateError(f"gate file {path} holds no gate")
        return cls(tuple(members), float(tensors["threshold"][0]))


def threshold_for(scores: np.ndarray, coverage: float = DEFAULT_COVERAGE) -> float:
    """The score that ``coverage`` of ``scores`` (images the network did not train on) do not exceed."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], not {coverage}")
    if len(scores) == 0:
        raise ValueError("no scores to choose a threshold from")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), coverage, method="higher"))
