"""The domain gate: does an image look like the images a model was trained on? If not, the model gives no label.

Two detectors, an image passes only if both let it (models/shipped/README.md has the measurements behind them):

- **Distance**: class-conditional Mahalanobis distance (Lee et al. 2018) on the spatially pooled features at the end
  of every stage (models.features). Per stage, the class means and one shared covariance (Ledoit-Wolf shrinkage: a
  few dozen images per class cannot estimate a 192 x 192 covariance alone) come from the training images; an image's
  stage distance is its squared distance to the nearest class mean as ``log(distance / median training distance)``,
  so that stages compare; the image's distance score is the largest stage score. It refuses what is no radiograph at
  all (blank, noise, text) and radiographs far from anything seen.
- **Outlier classifier** (when the model was given outlier images, ``--outliers``): a logistic regression on the
  standardised, concatenated stage features, training images against radiographs of another domain (the other
  shipped model's images). Distance alone cannot tell a shoulder from a hip on these small networks: measured on the
  hip model's first member, it let 83 of 90 shoulder test images through at 95% coverage; the classifier none.

For an ensemble each member scores with its own statistics and the scores are averaged. Thresholds are quantiles of
scores of images the network never trained on (out-of-fold images of a cross-validated run, or the validation split),
the same quantile for both detectors, the lowest that lets ``coverage`` of those images pass both. The gate's score
is the larger excess over its threshold: positive means refused, and it is what a report quotes.

Energy and maximum-softmax scores were measured too and lost (bench/gate_methods.py). Pure numpy at inference;
scikit-learn only when fitting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

GATE_FILE = "gate.safetensors"
METHOD = "mahalanobis-stages"
METHOD_WITH_CLASSIFIER = "mahalanobis-stages + outlier-classifier"
DEFAULT_COVERAGE = 0.95
CLASSIFIER_C = 0.01
"""Inverse L2 strength of the outlier classifier: strong, because a few hundred images meet a few hundred features."""


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


@dataclass(frozen=True)
class OutlierClassifier:
    """Log-odds that an image is an outlier: ``weights · (features - mean) / scale + bias`` on all stages joined."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float

    def odds(self, features: Sequence[np.ndarray]) -> np.ndarray:
        joined = np.concatenate([np.asarray(f) for f in features], axis=1)
        if joined.shape[1] != self.mean.shape[0]:
            raise GateError(f"features have {joined.shape[1]} dimensions, the outlier classifier {self.mean.shape[0]}")
        return np.asarray(((joined - self.mean) / self.scale) @ self.weights + self.bias)


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


def fit_classifier(inside: Sequence[np.ndarray], outside: Sequence[np.ndarray]) -> OutlierClassifier:
    """Training images (0) against outlier images (1), classes weighted equally, on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_in, x_out = np.concatenate(inside, axis=1), np.concatenate(outside, axis=1)
    x = np.concatenate([x_in, x_out])
    y = np.r_[np.zeros(len(x_in)), np.ones(len(x_out))]
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=CLASSIFIER_C, max_iter=5000, class_weight="balanced").fit(scaler.transform(x), y)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    return OutlierClassifier(scaler.mean_, scale, model.coef_[0].astype(np.float64), float(model.intercept_[0]))


@dataclass(frozen=True)
class DomainGate:
    """Per member, per stage statistics (and outlier classifiers), with the thresholds of both detectors."""

    members: tuple[tuple[StageStats, ...], ...]
    classifiers: tuple[OutlierClassifier, ...] = ()
    distance_threshold: float = float("inf")
    odds_threshold: float = float("inf")

    @classmethod
    def fit(
        cls, features: Sequence[np.ndarray], y: np.ndarray, outliers: Sequence[np.ndarray] | None = None
    ) -> DomainGate:
        """One member's gate from its training features (features[stage]: (N, D)), their class indices and, when
        given, outlier images' features."""
        stats = (tuple(fit_stage(np.asarray(f), y) for f in features),)
        classifiers = (fit_classifier(features, outliers),) if outliers is not None else ()
        return cls(stats, classifiers)

    @classmethod
    def join(
        cls, gates: Sequence[DomainGate], distance_threshold: float = float("inf"), odds_threshold: float = float("inf")
    ) -> DomainGate:
        """The members' gates as one ensemble gate with the given thresholds."""
        classifiers = tuple(c for g in gates for c in g.classifiers)
        members = tuple(m for g in gates for m in g.members)
        if classifiers and len(classifiers) != len(members):
            raise GateError("either every member has an outlier classifier or none has")
        return cls(members, classifiers, distance_threshold, odds_threshold)

    @property
    def method(self) -> str:
        return METHOD_WITH_CLASSIFIER if self.classifiers else METHOD

    @property
    def threshold(self) -> float:
        """The threshold of :meth:`scores`: an image scoring above it is refused."""
        return 0.0

    def _check(self, features: Sequence[Sequence[np.ndarray]]) -> None:
        if len(features) != len(self.members):
            raise GateError(f"features of {len(features)} networks for a gate of {len(self.members)}")
        for stats, feats in zip(self.members, features, strict=True):
            if len(feats) != len(stats):
                raise GateError(f"features of {len(feats)} stages for a gate of {len(stats)}")

    def distances(self, features: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        """(N,): each member's largest stage score on its own features, averaged; higher is farther."""
        self._check(features)
        rows = [
            np.max([s.scores(np.asarray(f)) for s, f in zip(stats, feats, strict=True)], axis=0)
            for stats, feats in zip(self.members, features, strict=True)
        ]
        return np.asarray(np.mean(rows, axis=0))

    def odds(self, features: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        """(N,): the outlier classifiers' log-odds averaged over members; -inf without classifiers."""
        self._check(features)
        if not self.classifiers:
            return np.full(len(features[0][0]), -np.inf)
        return np.asarray(np.mean([c.odds(f) for c, f in zip(self.classifiers, features, strict=True)], axis=0))

    def scores(self, features: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        """(N,): how far past the gate an image is (the larger excess of the two detectors); > 0 is refused."""
        excess = self.distances(features) - self.distance_threshold
        if self.classifiers:
            excess = np.maximum(excess, self.odds(features) - self.odds_threshold)
        return np.asarray(excess)

    def passes(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores <= self.threshold)

    def with_thresholds(self, distances: np.ndarray, odds: np.ndarray, coverage: float) -> DomainGate:
        """This gate with thresholds chosen on held-out in-domain images' distances and odds (see the module)."""
        if not self.classifiers:
            return DomainGate(self.members, (), threshold_for(distances, coverage))
        for step in range(round((1.0 - coverage) / 0.0025) + 1):
            level = min(1.0, coverage + 0.0025 * step)
            d, o = threshold_for(distances, level), threshold_for(odds, level)
            if np.mean((distances <= d) & (odds <= o)) >= coverage:
                break
        return DomainGate(self.members, self.classifiers, d, o)

    def save(self, path: Path) -> None:
        tensors: dict[str, np.ndarray] = {
            "distance_threshold": np.array([self.distance_threshold]),
            "odds_threshold": np.array([self.odds_threshold]),
        }
        for m, stats in enumerate(self.members):
            for s, stage in enumerate(stats):
                key = f"m{m}.s{s}"
                tensors[f"{key}.means"] = stage.means.astype(np.float32)
                tensors[f"{key}.precision"] = stage.precision.astype(np.float32)
                tensors[f"{key}.reference"] = np.array([stage.reference])
        for m, clf in enumerate(self.classifiers):
            tensors[f"m{m}.clf.mean"], tensors[f"m{m}.clf.scale"] = clf.mean, clf.scale
            tensors[f"m{m}.clf.weights"], tensors[f"m{m}.clf.bias"] = clf.weights, np.array([clf.bias])
        save_file(tensors, str(path))

    @classmethod
    def load(cls, path: Path) -> DomainGate:
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            raise GateError(f"cannot read gate file {path}: {exc}") from exc
        members: list[tuple[StageStats, ...]] = []
        while f"m{len(members)}.s0.means" in tensors:
            m, stages = len(members), list[StageStats]()
            while f"m{m}.s{len(stages)}.means" in tensors:
                key = f"m{m}.s{len(stages)}"
                means, precision = tensors[f"{key}.means"], tensors[f"{key}.precision"]
                reference = float(tensors[f"{key}.reference"][0])
                stages.append(StageStats(means.astype(np.float64), precision.astype(np.float64), reference))
            members.append(tuple(stages))
        classifiers = tuple(
            OutlierClassifier(
                tensors[f"m{m}.clf.mean"],
                tensors[f"m{m}.clf.scale"],
                tensors[f"m{m}.clf.weights"],
                float(tensors[f"m{m}.clf.bias"][0]),
            )
            for m in range(len(members))
            if f"m{m}.clf.mean" in tensors
        )
        if not members or "distance_threshold" not in tensors:
            raise GateError(f"gate file {path} holds no gate")
        distance, odds = float(tensors["distance_threshold"][0]), float(tensors["odds_threshold"][0])
        return cls(tuple(members), classifiers, distance, odds)


def threshold_for(scores: np.ndarray, coverage: float = DEFAULT_COVERAGE) -> float:
    """The score that ``coverage`` of ``scores`` (images the network did not train on) do not exceed."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], not {coverage}")
    if len(scores) == 0:
        raise ValueError("no scores to choose a threshold from")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), coverage, method="higher"))
