"""models.metrics: agreement with scikit-learn, undefined values, bootstrap CIs, temperature, calibration, readers."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as sklearn_metrics
from sklearn.calibration import calibration_curve

from predictd.models import metrics as m

CASES = [(2, 0), (2, 1), (3, 2), (5, 3), (9, 4)]  # (k, seed)


def _data(k: int, seed: int, n: int = 300, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels and informative, imperfect probabilities (rows sum to 1)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) + signal * np.eye(k)[y]
    return y, m.softmax(logits)


@pytest.mark.parametrize(("k", "seed"), CASES)
def test_label_metrics_match_sklearn(k: int, seed: int) -> None:
    y, probs = _data(k, seed)
    pred = probs.argmax(axis=1)
    # a class never predicted exercises zero division
    pred[pred == k - 1] = 0
    labels = list(range(k))
    assert m.accuracy(y, pred) == pytest.approx(sklearn_metrics.accuracy_score(y, pred))
    np.testing.assert_array_equal(
        m.confusion_matrix(y, pred, k), sklearn_metrics.confusion_matrix(y, pred, labels=labels)
    )
    p, r, f, _ = sklearn_metrics.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    mp, mr, mf = m.precision_recall_f1(y, pred, k)
    np.testing.assert_allclose(mp, p)
    np.testing.assert_allclose(mr, r)
    np.testing.assert_allclose(mf, f)
    assert m.cohen_kappa(y, pred, k) == pytest.approx(sklearn_metrics.cohen_kappa_score(y, pred, labels=labels))


def test_undefined_ratios_are_nan_and_raise_no_warning() -> None:
    y = np.array([0, 0, 1, 1, 0])
    pred = np.array([0, 1, 1, 1, 0])  # class 2 neither present nor predicted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p, r, f = m.precision_recall_f1(y, pred, 3, zero_division=math.nan)
        assert m.precision_recall_f1(y, pred, 3)[0][2] == 0.0  # the default, as scikit-learn's zero_division=0
        assert math.isnan(m.cohen_kappa([2, 2], [2, 2], 3))
        fpr, tpr, thr = m.roc_curve(np.zeros(4, dtype=bool), [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(p[:2], [1.0, 2 / 3])
    np.testing.assert_allclose(r[:2], [2 / 3, 1.0])
    assert math.isnan(p[2]) and math.isnan(r[2]) and math.isnan(f[2])
    assert np.isnan(tpr).all() and fpr[-1] == 1.0 and thr[0] == np.inf


def test_labels_outside_the_classes_are_rejected_not_dropped() -> None:
    for fn in (m.confusion_matrix, m.precision_recall_f1, m.cohen_kappa):
        with pytest.raises(ValueError, match="class indices"):
            fn([0, 1, 3], [0, 1, 1], 3)


def test_absent_classes_keep_their_rows() -> None:
    cm = m.confusion_matrix([0, 0, 1], [0, 1, 1], 4)
    assert cm.shape == (4, 4) and cm[2:].sum() == 0 and cm[:, 2:].sum() == 0
    assert all(len(a) == 4 for a in m.precision_recall_f1([0, 0, 1], [0, 1, 1], 4))
    np.testing.assert_array_equal(m.confusion_matrix([], [], 2), np.zeros((2, 2)))
    assert math.isnan(m.accuracy([], []))


@pytest.mark.parametrize(("k", "seed"), CASES)
def test_macro_f1_is_sklearn_macro_over_the_classes_seen(k: int, seed: int) -> None:
    y, probs = _data(k, seed, n=80)
    probs = np.c_[probs, np.zeros(len(y))]  # one more class: never present, never predicted
    pred = probs.argmax(axis=1)
    report = m.evaluate(y, probs, [f"c{i}" for i in range(k + 1)], n_boot=0)
    assert report["macro_f1"]["value"] == pytest.approx(sklearn_metrics.f1_score(y, pred, average="macro"))
    assert report["per_class"][f"c{k}"]["f1"]["value"] is None


def test_reliability_table_matches_sklearn_calibration_curve() -> None:
    y, probs = _data(4, 5, n=2000)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    table = [row for row in m.reliability_table(y, probs, bins=10) if row["count"]]
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=10, strategy="uniform")
    np.testing.assert_allclose([row["accuracy"] for row in table], prob_true)
    np.testing.assert_allclose([row["confidence"] for row in table], prob_pred)


@pytest.mark.parametrize(("k", "seed"), CASES)
def test_probability_metrics_match_sklearn(k: int, seed: int) -> None:
    y, probs = _data(k, seed)
    assert m.log_loss(y, probs) == pytest.approx(sklearn_metrics.log_loss(y, probs, labels=list(range(k))))
    for scores in (probs, np.round(probs, 1)):  # the rounded scores have many ties
        auc = m.roc_auc_ovr(y, scores)
        for c in range(k):
            assert auc[c] == pytest.approx(sklearn_metrics.roc_auc_score(y == c, scores[:, c]))
            for drop in (True, False):
                fpr, tpr, thr = m.roc_curve(y == c, scores[:, c], drop_intermediate=drop)
                efpr, etpr, ethr = sklearn_metrics.roc_curve(y == c, scores[:, c], drop_intermediate=drop)
                np.testing.assert_allclose(fpr, efpr)
                np.testing.assert_allclose(tpr, etpr)
                np.testing.assert_array_equal(thr, ethr)


def test_log_loss_clips_zero_probabilities() -> None:
    y = np.array([0, 1])
    probs = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert m.log_loss(y, probs) == pytest.approx(sklearn_metrics.log_loss(y, probs, labels=[0, 1]))
    assert math.isfinite(m.log_loss(y, probs))


def test_auc_undefined_without_positives_or_negatives() -> None:
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    auc = m.roc_auc_ovr(y, probs)
    assert auc[0] == pytest.approx(1.0) and auc[1] == pytest.approx(1.0)
    assert math.isnan(auc[2])
    assert math.isnan(m.roc_auc_ovr(np.zeros(3, dtype=int), np.tile([0.5, 0.5], (3, 1)))[0])


def test_kappa_undefined_for_a_single_class() -> None:
    assert math.isnan(m.cohen_kappa([1, 1, 1], [1, 1, 1], 3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_cis_contain_point_estimates(seed: int) -> None:
    k = 4
    y, probs = _data(k, seed, n=250)
    result = m.evaluate(y, probs, ["a", "b", "c", "d"], n_boot=200, seed=seed)
    entries = [result["accuracy"], result["kappa"], result["macro_f1"]]
    for per in result["per_class"].values():
        entries += [per["precision"], per["recall"], per["f1"], per["auc"]]
    for entry in entries:
        low, high = entry["ci"]
        assert low <= entry["value"] <= high
        assert high - low < 0.5

    def acc(yt: np.ndarray, pr: np.ndarray) -> float:
        return m.accuracy(yt, pr.argmax(axis=1))

    low, high = m.bootstrap_ci(acc, y, probs, n=300, seed=seed)
    assert low <= acc(y, probs) <= high
    assert m.bootstrap_ci(acc, y, probs, n=300, seed=seed) == (low, high)  # seeded, hence reproducible
    assert m.bootstrap_ci(acc, y, probs, n=300, seed=seed + 10) != (low, high)
    assert m.evaluate(y, probs, ["a", "b", "c", "d"], n_boot=200, seed=seed) == result
    assert m.bootstrap_ci(lambda yt, pr: m.roc_auc_ovr(yt, pr)[0], y, probs, n=300, seed=seed)[0] > 0.5


def test_bootstrap_skips_undefined_resamples() -> None:
    # class 1 appears once: many resamples lack it, making its AUC NaN there; those are skipped
    y = np.array([0] * 20 + [1])
    probs = np.tile([0.7, 0.3], (21, 1))
    probs[-1] = [0.2, 0.8]
    low, high = m.bootstrap_ci(lambda yt, pr: m.roc_auc_ovr(yt, pr)[1], y, probs, n=200)
    assert (low, high) == (1.0, 1.0)
    assert all(math.isnan(v) for v in m.bootstrap_ci(lambda yt, pr: math.nan, y, probs, n=20))


@pytest.mark.parametrize("t0", [0.5, 2.0])
def test_fit_temperature_recovers_known_temperature(t0: float) -> None:
    rng = np.random.default_rng(7)
    n, k = 4000, 5
    z = rng.normal(scale=3.0, size=(n, k))
    p = m.softmax(z, t0)
    y = np.minimum((rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1), k - 1)
    t = m.fit_temperature(z, y)
    assert t == pytest.approx(t0, rel=0.15)
    assert m.log_loss(y, m.softmax(z, t)) <= m.log_loss(y, m.softmax(z, 1.0)) + 1e-12


def test_fit_temperature_stays_in_bounds() -> None:
    z = np.array([[5.0, 0.0], [0.0, 5.0]])
    assert m.fit_temperature(z, np.array([0, 1])) == pytest.approx(0.05)  # perfect: sharpen as far as allowed


def test_ece_small_when_calibrated_larger_when_overconfident() -> None:
    rng = np.random.default_rng(3)
    n, k = 20000, 4
    z = rng.normal(scale=1.5, size=(n, k))
    p = m.softmax(z)
    y = np.minimum((rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1), k - 1)
    calibrated = m.expected_calibration_error(y, p)
    overconfident = m.expected_calibration_error(y, m.softmax(z, 0.4))
    assert calibrated < 0.02
    assert overconfident > 0.1
    table = m.reliability_table(y, p, bins=10)
    assert len(table) == 10 and sum(row["count"] for row in table) == n
    weighted = sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in table if row["count"]) / n
    assert weighted == pytest.approx(m.expected_calibration_error(y, p, bins=10))


def test_ece_by_hand() -> None:
    y = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])
    # bin (0.8, 0.9]: conf 0.9, acc 0.5; bin (0.5, 0.6]: conf 0.6, acc 0; bin (0.6, 0.7]: conf 0.7, acc 1
    expected = (2 * 0.4 + 0.6 + 0.3) / 4
    assert m.expected_calibration_error(y, probs, bins=10) == pytest.approx(expected)


READERS = {
    "r1": ["a", "a", "b", "c", "a"],
    "r2": ["a", "b", "b", "c", "b"],
    "r3": ["a", "a", "c", "c", "b"],
}
MODEL = ["a", "a", "b", "b", "b"]


def test_reader_study_hand_example() -> None:
    result = m.reader_study(READERS, MODEL, ["a", "b", "c"])
    # majority of all three: a a b c b; the model misses case 4 -> 4/5; p_e = (2*2 + 2*3 + 1*0) / 25
    assert result["consensus"]["n"] == 5 and result["consensus"]["n_ties"] == 0
    assert result["consensus"]["model"]["accuracy"] == pytest.approx(0.8)
    assert result["consensus"]["model"]["kappa"] == pytest.approx((0.8 - 0.4) / 0.6)
    loo = result["leave_one_out"]
    # without r1: r2 and r3 agree on cases 1, 4, 5 only (gold a, c, b); r1 says a, c, a; the model a, b, b
    assert (loo["r1"]["n"], loo["r1"]["n_ties"]) == (3, 2)
    assert loo["r1"]["reader"] == {"accuracy": pytest.approx(2 / 3), "kappa": pytest.approx(0.5)}
    assert loo["r1"]["model"] == {"accuracy": pytest.approx(2 / 3), "kappa": pytest.approx(0.5)}
    # without r2: gold a, a, -, c, -; r2 says a, b, c; the model a, a, b
    assert loo["r2"]["n"] == 3
    assert loo["r2"]["reader"]["accuracy"] == pytest.approx(2 / 3)
    assert loo["r2"]["model"]["accuracy"] == pytest.approx(2 / 3)
    assert loo["r2"]["reader"]["kappa"] == pytest.approx(0.5)  # p_o 2/3, p_e (2*1 + 0*1 + 1*1) / 9
    assert result["mean"]["reader"]["accuracy"] == pytest.approx(2 / 3)
    assert result["readers"] == ["r1", "r2", "r3"] and result["n_cases"] == 5
    json.dumps(result, allow_nan=False)


def test_reader_study_tie_rule_first() -> None:
    result = m.reader_study(READERS, MODEL, ["a", "b", "c"], ties="first")
    # without r1, ties go to the label listed first: gold a a b c b; r1 = a a b c a
    assert result["leave_one_out"]["r1"]["n"] == 5
    assert result["leave_one_out"]["r1"]["reader"]["accuracy"] == pytest.approx(0.8)


def test_majority_vote() -> None:
    votes = np.array([[0, 0, 1, 2], [0, 1, 2, 2], [1, 1, 0, 0]])
    np.testing.assert_array_equal(m.majority_vote(votes, 3), [0, 1, -1, 2])
    np.testing.assert_array_equal(m.majority_vote(votes, 3, "first"), [0, 1, 0, 2])


def test_reader_study_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="two readers"):
        m.reader_study({"r1": ["a"]}, ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="unknown label"):
        m.reader_study({"r1": ["a"], "r2": ["x"]}, ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="same cases"):
        m.reader_study({"r1": ["a"], "r2": ["a", "b"]}, ["a"], ["a", "b"])


def test_evaluate_is_json_ready_with_required_keys() -> None:
    y, probs = _data(3, 11, n=120)
    labels = ["none", "tha", "hemiarthroplasty", "unseen"]  # a class with no cases: its AUC is undefined
    probs = np.c_[probs * 0.95, np.full(len(y), 0.05)]
    result = m.evaluate(y, probs, labels, n_boot=50)
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text) == result
    for key in ("n", "accuracy", "kappa", "log_loss", "ece", "per_class", "confusion_matrix", "labels"):
        assert key in result
    assert result["n"] == 120 and result["labels"] == labels
    assert set(result["accuracy"]) == {"value", "ci"} and len(result["kappa"]["ci"]) == 2
    assert list(result["per_class"]) == labels
    for per in result["per_class"].values():
        assert {"precision", "recall", "f1", "auc"} <= set(per)
    assert result["per_class"]["unseen"]["auc"] == {"value": None, "ci": [None, None]}
    assert np.array(result["confusion_matrix"]).sum() == 120
    assert result["accuracy"]["value"] == pytest.approx(m.accuracy(y, probs.argmax(axis=1)))
    assert isinstance(result["log_loss"], float) and isinstance(result["ece"], float)


def test_evaluate_rejects_mismatched_labels() -> None:
    y, probs = _data(3, 0, n=10)
    with pytest.raises(ValueError, match="labels"):
        m.evaluate(y, probs, ["a", "b"], n_boot=0)


def test_precision_of_a_class_never_predicted_is_undefined_not_zero() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.array([[0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.6, 0.4, 0.0]] * 2)  # class 2 is never the answer
    report = m.evaluate(y, probs, ["a", "b", "c"], n_boot=20)
    assert report["per_class"]["c"]["precision"]["value"] is None
    assert report["per_class"]["c"]["recall"]["value"] == 0.0
    assert report["per_class"]["a"]["precision"]["value"] == 0.5


def test_roc_curve_takes_any_nonzero_label_as_positive() -> None:
    scores = np.array([0.1, 0.9, 0.4, 0.6])
    for a, b in zip(m.roc_curve([0, 2, 0, 2], scores), m.roc_curve([False, True, False, True], scores), strict=True):
        np.testing.assert_array_equal(a, b)
