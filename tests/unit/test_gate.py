"""models.gate: Mahalanobis stage scores, ensemble averaging, thresholds, and the gate file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from predictd.models.gate import DomainGate, GateError, threshold_for


def _clusters(n: int, seed: int, dims: tuple[int, ...] = (8, 16)) -> tuple[list[np.ndarray], np.ndarray]:
    """Two classes, two stages of features: class means apart, correlated noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    stages = []
    for d in dims:
        mix = rng.normal(size=(d, d)) * 0.3 + np.eye(d)
        stages.append(rng.normal(size=(n, d)) @ mix + y[:, None] * 3.0)
    return stages, y


def test_in_domain_scores_low_far_away_scores_high() -> None:
    train, y = _clusters(200, 0)
    gate = DomainGate.fit(train, y)
    held_out, _ = _clusters(100, 0)  # same distribution (same mixing), new draws
    far = [f + 25.0 for f in held_out]
    noise = [np.random.default_rng(1).normal(size=f.shape) * 10 for f in held_out]
    inside, outside, noisy = gate.distances([held_out]), gate.distances([far]), gate.distances([noise])
    threshold = threshold_for(inside, 0.95)
    assert np.mean(inside <= threshold) >= 0.95
    assert np.all(outside > threshold) and np.mean(noisy > threshold) > 0.9


def test_one_stage_far_is_enough_to_refuse() -> None:
    train, y = _clusters(200, 0)
    gate = DomainGate.fit(train, y)
    probe, _ = _clusters(50, 0)
    shifted = [probe[0] + 20.0, probe[1]]  # only the first stage looks wrong (blank image, noise)
    threshold = threshold_for(gate.distances([probe]), 0.95)
    assert np.all(gate.distances([shifted]) > threshold)


def test_ensemble_averages_members_and_checks_shapes() -> None:
    a_feats, y = _clusters(120, 0)
    b_feats, _ = _clusters(120, 1)
    a, b = DomainGate.fit(a_feats, y), DomainGate.fit(b_feats, y)
    both = DomainGate.join([a, b], distance_threshold=1.5)
    expected = (a.distances([a_feats]) + b.distances([b_feats])) / 2
    assert np.allclose(both.distances([a_feats, b_feats]), expected)
    assert np.allclose(both.scores([a_feats, b_feats]), expected - 1.5)  # the excess over the threshold
    assert both.threshold == 0.0
    with pytest.raises(GateError, match="gate of 2"):
        both.distances([a_feats])
    with pytest.raises(GateError, match="dimensions"):
        a.distances([[a_feats[1], a_feats[0]]])


def test_gate_file_round_trip(tmp_path: Path) -> None:
    feats, y = _clusters(80, 2)
    outliers = [f + 4.0 for f in feats]
    gate = DomainGate.join([DomainGate.fit(feats, y, outliers)], distance_threshold=0.75, odds_threshold=-1.0)
    gate.save(tmp_path / "gate.safetensors")
    loaded = DomainGate.load(tmp_path / "gate.safetensors")
    assert (loaded.distance_threshold, loaded.odds_threshold, len(loaded.classifiers)) == (0.75, -1.0, 1)
    assert np.allclose(loaded.scores([feats]), gate.scores([feats]), atol=1e-4)
    assert np.allclose(loaded.odds([feats]), gate.odds([feats]), atol=1e-4)


def test_damaged_gate_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gate.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(GateError, match="cannot read"):
        DomainGate.load(path)


def test_threshold_for_is_a_conservative_quantile() -> None:
    scores = np.arange(20, dtype=float)
    assert threshold_for(scores, 0.95) == 19.0  # 'higher': at least 95% of the scores pass
    assert threshold_for(scores, 0.5) == 10.0
    with pytest.raises(ValueError):
        threshold_for(scores, 0.0)


def test_outlier_classifier_refuses_the_other_domain_that_distance_lets_through() -> None:
    """Another domain close in distance (shifted across the classes, not along them) is what the classifier is for."""
    train, y = _clusters(200, 0)

    def other_domain(n: int, seed: int) -> list[np.ndarray]:
        features, _ = _clusters(n, seed)
        return [f + 1.2 * np.where(np.arange(f.shape[1]) % 2 == 0, 1.0, -1.0) for f in features]

    gate = DomainGate.fit(train, y, outliers=other_domain(200, 0))
    held, _ = _clusters(100, 0)
    near = other_domain(100, 7)
    tuned = gate.with_thresholds(gate.distances([held]), gate.odds([held]), coverage=0.95)
    assert np.mean(tuned.passes(tuned.scores([held]))) >= 0.95
    assert np.mean(gate.distances([near]) <= tuned.distance_threshold) > 0.5, "distance alone lets most through"
    assert np.mean(tuned.passes(tuned.scores([near]))) < 0.05
    assert tuned.method == "mahalanobis-stages + outlier-classifier"


def test_without_outliers_the_threshold_is_the_distance_quantile() -> None:
    train, y = _clusters(120, 1)
    gate = DomainGate.fit(train, y)
    held, _ = _clusters(60, 1)
    tuned = gate.with_thresholds(gate.distances([held]), gate.odds([held]), coverage=0.9)
    assert tuned.distance_threshold == threshold_for(gate.distances([held]), 0.9)
    assert not tuned.classifiers and np.isneginf(gate.odds([held])).all()
