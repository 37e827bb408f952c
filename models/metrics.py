"""Evaluation metrics for classifiers, in pure numpy (no scikit-learn, no torch).

Conventions: ``y_true`` is an integer array ``(n,)`` of class indices ``0..k-1``; ``probs`` is ``(n, k)`` with rows
summing to 1; ``labels`` names the ``k`` classes in index order. Per-class metrics are one-vs-rest. Confidence
intervals are percentile bootstrap intervals over cases. :func:`evaluate` gathers what the hip-hardware paper reports
(accuracy, Cohen's kappa, per-class precision / recall / F1 / AUC, each with a 95% CI, the confusion matrix, log loss
and calibration); :func:`reader_study` compares the model with human readers against a leave-one-reader-out
majority-vote gold standard.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

TieRule = Literal["exclude", "first"]

__all__ = [
    "accuracy",
    "bootstrap_ci",
    "cohen_kappa",
    "confusion_matrix",
    "evaluate",
    "expected_calibration_error",
    "fit_temperature",
    "log_loss",
    "majority_vote",
    "precision_recall_f1",
    "reader_study",
    "reliability_table",
    "roc_auc_ovr",
    "roc_curve",
    "softmax",
]


def _as_int(y: npt.ArrayLike) -> IntArray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D array of class indices, got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _as_probs(probs: npt.ArrayLike, n: int | None = None) -> FloatArray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"expected probabilities of shape (n, k), got {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{arr.shape[0]} rows of probabilities for {n} cases")
    return arr


def _finite_or_none(x: float) -> float | None:
    """``x`` as a float, or ``None`` when it is NaN or infinite (strict JSON has neither)."""
    x = float(x)
    return x if math.isfinite(x) else None


def softmax(logits: npt.ArrayLike, temperature: float = 1.0) -> FloatArray:
    """Row-wise softmax of ``logits / temperature``, computed stably."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


def accuracy(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Fraction of cases whose prediction equals the truth (NaN for no cases)."""
    t, p = _as_int(y_true), _as_int(y_pred)
    if t.shape != p.shape:
        raise ValueError("y_true and y_pred differ in length")
    return float(np.mean(t == p)) if t.size else math.nan


def confusion_matrix(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, k: int) -> IntArray:
    """``(k, k)`` counts: row = true class, column = predicted class."""
    t, p = _as_int(y_true), _as_int(y_pred)
    if t.shape != p.shape:
        raise ValueError("y_true and y_pred differ in length")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= k):
        raise ValueError(f"class indices must lie in 0..{k - 1}")
    cm: IntArray = np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)
    return cm


def _safe_div(num: FloatArray, den: FloatArray, zero_division: float) -> FloatArray:
    out = np.full(num.shape, zero_division, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_recall_f1(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, k: int, *, zero_division: float = 0.0
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-class (one-vs-rest) precision, recall and F1, each an array of length ``k``.

    A ratio whose denominator is zero (a class never predicted, never present, or neither) is ``zero_division``:
    0 by default, as scikit-learn's ``zero_division=0``; the bootstrap passes NaN so that such resamples are skipped.
    """
    cm = confusion_matrix(y_true, y_pred, k).astype(np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    actual = cm.sum(axis=1)
    precision = _safe_div(tp, predicted, zero_division)
    recall = _safe_div(tp, actual, zero_division)
    f1 = _safe_div(2.0 * tp, predicted + actual, zero_division)
    return precision, recall, f1


def cohen_kappa(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, k: int) -> float:
    """Cohen's kappa (unweighted): ``(p_o - p_e) / (1 - p_e)``; NaN when ``p_e == 1`` (one class only) or no cases."""
    cm = confusion_matrix(y_true, y_pred, k).astype(np.float64)
    n = cm.sum()
    if n == 0:
        return math.nan
    p_o = np.trace(cm) / n
    p_e = float(cm.sum(axis=1) @ cm.sum(axis=0)) / (n * n)
    if math.isclose(p_e, 1.0, rel_tol=0.0, abs_tol=1e-15):
        return math.nan
    return float((p_o - p_e) / (1.0 - p_e))


def log_loss(y_true: npt.ArrayLike, probs: npt.ArrayLike, eps: float | None = None) -> float:
    """Mean negative log-likelihood of the true class; probabilities clipped to ``[eps, 1 - eps]``.

    ``eps`` defaults to the float64 machine epsilon, as scikit-learn's ``log_loss``.
    """
    t = _as_int(y_true)
    p = _as_probs(probs, t.size)
    if eps is None:
        eps = float(np.finfo(np.float64).eps)
    picked = np.clip(p[np.arange(t.size), t], eps, 1.0 - eps)
    return float(-np.mean(np.log(picked)))


def _average_ranks(x: FloatArray) -> FloatArray:
    """1-based ranks of ``x``, ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    bounds = np.r_[starts, xs.size]
    group_rank = (bounds[:-1] + bounds[1:] - 1) / 2.0 + 1.0
    group = np.cumsum(np.r_[True, xs[1:] != xs[:-1]]) - 1
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = group_rank[group]
    return ranks


def _binary_auc(positive: npt.NDArray[np.bool_], scores: FloatArray) -> float:
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_ovr(y_true: npt.ArrayLike, probs: npt.ArrayLike) -> FloatArray:
    """Per-class one-vs-rest ROC AUC (Mann-Whitney U from average ranks, so ties count one half).

    A class with no positive or no negative cases gets NaN.
    """
    t = _as_int(y_true)
    p = _as_probs(probs, t.size)
    return np.array([_binary_auc(t == c, p[:, c]) for c in range(p.shape[1])], dtype=np.float64)


def roc_curve(
    y_true_binary: npt.ArrayLike, scores: npt.ArrayLike, *, drop_intermediate: bool = True
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """ROC curve of a binary problem: ``(fpr, tpr, thresholds)``, thresholds decreasing, the first one ``inf``.

    Same points as scikit-learn's ``roc_curve`` (collinear points dropped unless ``drop_intermediate=False``).
    A rate whose denominator is zero (no negatives / no positives) is NaN.
    """
    y = np.asarray(y_true_binary).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError("y_true_binary and scores must be 1-D and of equal length")
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    distinct = np.flatnonzero(np.diff(s))
    idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[idx].astype(np.float64)
    fps = 1.0 + idx - tps
    thresholds = s[idx]
    if drop_intermediate and tps.size > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thresholds


def _bin_index(confidence: FloatArray, bins: int) -> IntArray:
    """Equal-width bins over [0, 1], right-closed: bin b holds confidences in (b/bins, (b+1)/bins], 0 in bin 0."""
    idx: IntArray = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    return idx


def _reliability(y_true: npt.ArrayLike, probs: npt.ArrayLike, bins: int) -> tuple[IntArray, FloatArray, FloatArray]:
    t = _as_int(y_true)
    p = _as_probs(probs, t.size)
    if bins < 1:
        raise ValueError("bins must be >= 1")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    b = _bin_index(confidence, bins)
    count = np.bincount(b, minlength=bins).astype(np.int64)
    conf_sum = np.bincount(b, weights=confidence, minlength=bins).astype(np.float64)
    acc_sum = np.bincount(b, weights=correct, minlength=bins).astype(np.float64)
    return count, conf_sum, acc_sum


def expected_calibration_error(y_true: npt.ArrayLike, probs: npt.ArrayLike, bins: int = 15) -> float:
    """Top-label expected calibration error over ``bins`` equal-width confidence bins.

    ``sum_b (n_b / n) * |accuracy_b - mean confidence_b|``, confidence being the largest probability of a case
    and a case correct when its argmax is the true class.
    """
    count, conf_sum, acc_sum = _reliability(y_true, probs, bins)
    n = int(count.sum())
    if n == 0:
        return math.nan
    return float(np.abs(acc_sum - conf_sum).sum() / n)


def reliability_table(y_true: npt.ArrayLike, probs: npt.ArrayLike, bins: int = 15) -> list[dict[str, Any]]:
    """Rows of a reliability diagram, one per equal-width top-label confidence bin (the bins of the ECE).

    Each row: ``lower``, ``upper`` (the bin is ``(lower, upper]``), ``count``, ``confidence`` (mean top probability)
    and ``accuracy`` (fraction correct); the last two are ``None`` for an empty bin.
    """
    count, conf_sum, acc_sum = _reliability(y_true, probs, bins)
    rows: list[dict[str, Any]] = []
    for b in range(bins):
        c = int(count[b])
        rows.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "count": c,
                "confidence": float(conf_sum[b] / c) if c else None,
                "accuracy": float(acc_sum[b] / c) if c else None,
            }
        )
    return rows


def _nll_at(logits: FloatArray, y: IntArray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(y.size), y]))


def fit_temperature(
    logits: npt.ArrayLike, y_true: npt.ArrayLike, *, lower: float = 0.05, upper: float = 20.0, tol: float = 1e-5
) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (temperature scaling, Guo et al. 2017).

    Golden-section search on ``log T`` over ``[lower, upper]``. The NLL is convex in ``1 / T``, hence unimodal in
    ``log T``, so the search finds the minimum in the interval (or its nearer end when the minimum lies outside).
    """
    z = np.asarray(logits, dtype=np.float64)
    t = _as_int(y_true)
    if z.ndim != 2 or z.shape[0] != t.size or t.size == 0:
        raise ValueError("logits must be (n, k) with n == len(y_true) > 0")
    if not 0 < lower < upper:
        raise ValueError("need 0 < lower < upper")
    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = math.log(lower), math.log(upper)
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = _nll_at(z, t, math.exp(c)), _nll_at(z, t, math.exp(d))
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = _nll_at(z, t, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = _nll_at(z, t, math.exp(d))
    best = (a + b) / 2.0
    candidates = [(math.log(lower), _nll_at(z, t, lower)), (best, _nll_at(z, t, math.exp(best)))]
    candidates.append((math.log(upper), _nll_at(z, t, upper)))
    return float(math.exp(min(candidates, key=lambda pair: pair[1])[0]))


def _bootstrap_samples(
    fn: Callable[[IntArray, FloatArray], Any], y_true: IntArray, probs: FloatArray, n: int, seed: int
) -> FloatArray:
    """``(n, m)`` values of a (vector-valued) statistic on ``n`` case resamples; undefined values are NaN."""
    rng = np.random.default_rng(seed)
    size = y_true.size
    rows: list[FloatArray] = []
    for _ in range(n):
        idx = rng.integers(0, size, size=size)
        try:
            value = np.atleast_1d(np.asarray(fn(y_true[idx], probs[idx]), dtype=np.float64))
        except (ValueError, ZeroDivisionError):
            value = np.array([math.nan])
        rows.append(value)
    width = max((r.size for r in rows), default=1)
    out = np.full((n, width), np.nan)
    for i, r in enumerate(rows):
        if r.size == width:
            out[i] = r
    out[~np.isfinite(out)] = np.nan
    return out


def _percentile_ci(samples: FloatArray, alpha: float) -> tuple[float, float]:
    valid = samples[np.isfinite(samples)]
    if valid.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(valid, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def bootstrap_ci(
    fn: Callable[[IntArray, FloatArray], float],
    y_true: npt.ArrayLike,
    probs: npt.ArrayLike,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` interval of ``fn(y_true, probs)``, resampling cases with replacement.

    Resamples on which the metric is undefined (``fn`` returns NaN / inf or raises ``ValueError``) are skipped;
    ``(nan, nan)`` when none is defined. Deterministic for a given ``seed``.
    """
    t = _as_int(y_true)
    p = _as_probs(probs, t.size)
    if t.size == 0:
        return math.nan, math.nan
    return _percentile_ci(_bootstrap_samples(fn, t, p, n, seed)[:, 0], alpha)


def _value_ci(value: float, ci: tuple[float, float]) -> dict[str, Any]:
    return {"value": _finite_or_none(value), "ci": [_finite_or_none(ci[0]), _finite_or_none(ci[1])]}


def evaluate(
    y_true: npt.ArrayLike,
    probs: npt.ArrayLike,
    labels: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    bins: int = 15,
) -> dict[str, Any]:
    """Everything ``predictd evaluate`` reports, as a JSON-ready dict (undefined values are ``None``).

    Keys: ``n``, ``labels``, ``ci_level``, ``n_boot``, ``accuracy`` / ``kappa`` / ``macro_f1`` (``{value, ci}``),
    ``log_loss``, ``ece``, ``reliability`` (rows of :func:`reliability_table`), ``per_class`` (per label:
    ``support`` and ``precision`` / ``recall`` / ``f1`` / ``auc`` as ``{value, ci}``) and ``confusion_matrix``
    (rows true, columns predicted, in ``labels`` order). Predictions are the argmax of ``probs``; all CIs come from
    the same ``n_boot`` case resamples (seeded).
    """
    t = _as_int(y_true)
    p = _as_probs(probs, t.size)
    k = len(labels)
    if p.shape[1] != k:
        raise ValueError(f"{p.shape[1]} probability columns for {k} labels")
    if t.size == 0:
        raise ValueError("no cases to evaluate")
    pred = p.argmax(axis=1)
    # NaN (reported as None, shown as "n/a"): a precision of a class never predicted is undefined, not 0
    precision, recall, f1 = precision_recall_f1(t, pred, k, zero_division=math.nan)
    auc = roc_auc_ovr(t, p)
    point = np.r_[accuracy(t, pred), cohen_kappa(t, pred, k), _macro_f1(t, pred, k), precision, recall, f1, auc]

    def stats(yt: IntArray, pr: FloatArray) -> FloatArray:
        yp = pr.argmax(axis=1)
        pc, rc, fc = precision_recall_f1(yt, yp, k, zero_division=math.nan)
        return np.r_[accuracy(yt, yp), cohen_kappa(yt, yp, k), _macro_f1(yt, yp, k), pc, rc, fc, roc_auc_ovr(yt, pr)]

    if n_boot > 0:
        samples = _bootstrap_samples(stats, t, p, n_boot, seed)
        cis = [_percentile_ci(samples[:, j], alpha) for j in range(point.size)]
    else:
        cis = [(math.nan, math.nan)] * point.size

    def entry(j: int) -> dict[str, Any]:
        return _value_ci(float(point[j]), cis[j])

    support = np.bincount(t, minlength=k)
    per_class: dict[str, Any] = {}
    for c, label in enumerate(labels):
        per_class[str(label)] = {
            "support": int(support[c]),
            "precision": entry(3 + c),
            "recall": entry(3 + k + c),
            "f1": entry(3 + 2 * k + c),
            "auc": entry(3 + 3 * k + c),
        }
    return {
        "n": int(t.size),
        "labels": [str(label) for label in labels],
        "ci_level": 1.0 - alpha,
        "n_boot": int(n_boot),
        "accuracy": entry(0),
        "kappa": entry(1),
        "macro_f1": entry(2),
        "log_loss": _finite_or_none(log_loss(t, p)),
        "ece": _finite_or_none(expected_calibration_error(t, p, bins)),
        "reliability": reliability_table(t, p, bins),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(t, pred, k).tolist(),
    }


def _macro_f1(y_true: IntArray, y_pred: npt.ArrayLike, k: int) -> float:
    """Mean F1 over the classes present in the truth or the predictions."""
    cm = confusion_matrix(y_true, y_pred, k)
    seen = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    if not seen.any():
        return math.nan
    return float(precision_recall_f1(y_true, y_pred, k)[2][seen].mean())


def _encode(values: Sequence[str], index: Mapping[str, int], who: str) -> IntArray:
    try:
        return np.array([index[v] for v in values], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"{who}: unknown label {e.args[0]!r}") from None


def majority_vote(votes: IntArray, k: int, ties: TieRule = "exclude") -> IntArray:
    """Per-case majority label of ``votes`` (``(readers, cases)`` class indices); -1 marks a case left undecided.

    The label with the most votes wins (a plurality, not necessarily more than half). A tie for the most votes is
    undecided (-1) with ``ties="exclude"``; with ``ties="first"`` the tied label that comes first in ``labels`` wins.
    """
    m = votes.shape[1]
    counts = np.zeros((m, k), dtype=np.int64)
    for row in votes:
        counts[np.arange(m), row] += 1
    winner = counts.argmax(axis=1)
    if ties == "exclude":
        tied = (counts == counts.max(axis=1, keepdims=True)).sum(axis=1) > 1
        winner[tied] = -1
    out: IntArray = winner.astype(np.int64)
    return out


def _agreement(gold: IntArray, rater: IntArray, k: int) -> dict[str, Any]:
    keep = gold >= 0
    return {
        "accuracy": _finite_or_none(accuracy(gold[keep], rater[keep])),
        "kappa": _finite_or_none(cohen_kappa(gold[keep], rater[keep], k)),
    }


def reader_study(
    reader_labels: Mapping[str, Sequence[str]],
    model_pred: Sequence[str],
    labels: Sequence[str],
    *,
    ties: TieRule = "exclude",
) -> dict[str, Any]:
    """Compare the model with human readers as the hip-hardware paper does (JSON-ready dict).

    ``reader_labels`` maps each reader to their label per case, ``model_pred`` is the model's label per case, all
    in the same case order and drawn from ``labels``. The gold standard is the majority vote of the readers
    (:func:`majority_vote`; by default a tie leaves the case out of that comparison, ``ties="first"`` breaks it in
    favour of the label listed first). Returned:

    - ``consensus``: model ``accuracy`` / ``kappa`` against the majority of all readers, with ``n`` cases decided
      and ``n_ties`` left out;
    - ``leave_one_out``: per reader, the gold standard is the majority of the *other* readers; that reader's and
      the model's ``accuracy`` / ``kappa`` against it, on the same ``n`` cases;
    - ``mean``: those accuracies and kappas averaged over the readers (undefined ones skipped).

    Accuracy is the fraction of agreement with the gold standard; kappa is Cohen's kappa with it.
    """
    if len(reader_labels) < 2:
        raise ValueError("a reader study needs at least two readers")
    if ties not in ("exclude", "first"):
        raise ValueError(f"unknown tie rule {ties!r}")
    k = len(labels)
    index = {str(label): i for i, label in enumerate(labels)}
    if len(index) != k:
        raise ValueError("labels must be unique")
    model = _encode(model_pred, index, "model")
    names = list(reader_labels)
    encoded = [_encode(reader_labels[name], index, f"reader {name!r}") for name in names]
    if any(e.size != model.size for e in encoded):
        raise ValueError("every reader and the model must label the same cases")
    votes = np.stack(encoded)

    gold_all = majority_vote(votes, k, ties)
    consensus = {
        "n": int((gold_all >= 0).sum()),
        "n_ties": int((gold_all < 0).sum()),
        "model": _agreement(gold_all, model, k),
    }

    loo: dict[str, Any] = {}
    for i, name in enumerate(names):
        gold = majority_vote(np.delete(votes, i, axis=0), k, ties)
        loo[name] = {
            "n": int((gold >= 0).sum()),
            "n_ties": int((gold < 0).sum()),
            "reader": _agreement(gold, votes[i], k),
            "model": _agreement(gold, model, k),
        }

    def mean_of(who: str, metric: str) -> float | None:
        vals = [v[who][metric] for v in loo.values() if v[who][metric] is not None]
        return float(np.mean(vals)) if vals else None

    return {
        "labels": [str(label) for label in labels],
        "readers": names,
        "n_cases": int(model.size),
        "ties": ties,
        "consensus": consensus,
        "leave_one_out": loo,
        "mean": {
            who: {metric: mean_of(who, metric) for metric in ("accuracy", "kappa")} for who in ("reader", "model")
        },
    }
