"""Classifier metrics: scikit-learn computes them; this module fixes the conventions and adds what it lacks.

``y_true`` is an integer array ``(n,)`` of class indices ``0..k-1``; ``probs`` is ``(n, k)``, rows summing to 1;
``labels`` names the ``k`` classes in index order. :func:`evaluate` gathers what the hip-hardware paper reports.

From :mod:`sklearn.metrics`: accuracy, confusion matrix, per-class precision / recall / F1 (macro F1: the mean of
the defined ones), Cohen's kappa, log loss, one-vs-rest ROC AUC, ROC curves. The wrappers pass the labels ``0..k-1``
explicitly (a class absent from a resample keeps its entry) and make an undefined value NaN, never a warning nor
scikit-learn's default 0, so that reports show it as undefined (``None``, "n/a") and the bootstrap skips it.
Hand-written, for want of a scikit-learn equivalent:

- confidence intervals (:func:`bootstrap_ci`, :func:`evaluate`): percentile bootstrap over cases of any, also
  vector-valued, metric, seeded with ``numpy.random.default_rng(seed)``, all statistics on the same resamples;
- :func:`expected_calibration_error` / :func:`reliability_table`: the project's top-label ECE over equal-width bins
  ``(b/B, (b+1)/B]``, every bin with its count (``sklearn.calibration.calibration_curve`` is binary, drops empty
  bins and returns no counts, which the ECE weights need);
- :func:`fit_temperature`: temperature scaling on raw logits, its NLL an exact log-sum-exp (no clipping);
- :func:`softmax` with a temperature, and the reader study (:func:`majority_vote`, :func:`reader_study`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

Labels = Sequence[str]
Metric = Callable[[IntArray, FloatArray], Any]
TieRule = Literal["exclude", "first"]
_PER_CLASS = ("precision", "recall", "f1", "auc")  # the per-class entries of evaluate, in _label_stats order


def _as_int(y: ArrayLike) -> IntArray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D array of class indices, got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _inputs(y_true: ArrayLike, probs: ArrayLike) -> tuple[IntArray, FloatArray]:
    """Class indices ``(n,)`` and probabilities ``(n, k)``, checked."""
    t, p = _as_int(y_true), np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"expected probabilities of shape (n, k), got {p.shape}")
    if p.shape[0] != t.size:
        raise ValueError(f"{p.shape[0]} rows of probabilities for {t.size} cases")
    return t, p


def _pair(y_true: ArrayLike, y_pred: ArrayLike, k: int | None = None) -> tuple[IntArray, IntArray]:
    """Truth and predictions as class indices of equal length, checked to lie in ``0..k-1`` when ``k`` is given."""
    t, p = _as_int(y_true), _as_int(y_pred)
    if t.shape != p.shape:
        raise ValueError("y_true and y_pred differ in length")
    if k is not None and t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= k):
        raise ValueError(f"class indices must lie in 0..{k - 1}")
    return t, p


def _finite_or_none(x: float) -> float | None:
    """``x`` as a float, or ``None`` when it is NaN or infinite (strict JSON has neither)."""
    x = float(x)
    return x if math.isfinite(x) else None


def softmax(logits: ArrayLike, temperature: float = 1.0) -> FloatArray:
    """Row-wise softmax of ``logits / temperature``, computed stably."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of cases whose prediction equals the truth (NaN for no cases)."""
    t, p = _pair(y_true, y_pred)
    return float(skm.accuracy_score(t, p)) if t.size else math.nan


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, k: int) -> IntArray:
    """``(k, k)`` counts: row = true class, column = predicted class."""
    t, p = _pair(y_true, y_pred, k)
    if not t.size:
        return np.zeros((k, k), dtype=np.int64)
    return np.asarray(skm.confusion_matrix(t, p, labels=np.arange(k)), dtype=np.int64)


def precision_recall_f1(
    y_true: ArrayLike, y_pred: ArrayLike, k: int, *, zero_division: float = 0.0
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-class (one-vs-rest) precision, recall and F1, each of length ``k``; a ratio whose denominator is zero
    (class never predicted, never present, or neither) is ``zero_division`` (:func:`evaluate`: NaN, undefined)."""
    t, p = _pair(y_true, y_pred, k)
    if not t.size:
        return np.full(k, zero_division), np.full(k, zero_division), np.full(k, zero_division)
    prf = skm.precision_recall_fscore_support(t, p, labels=np.arange(k), average=None, zero_division=np.nan)
    precision, recall, f1 = (np.nan_to_num(np.asarray(a, dtype=np.float64), nan=zero_division) for a in prf[:3])
    return precision, recall, f1


def cohen_kappa(y_true: ArrayLike, y_pred: ArrayLike, k: int) -> float:
    """Cohen's kappa (unweighted); NaN when chance agreement is 1 (one class only) or there are no cases."""
    t, p = _pair(y_true, y_pred, k)
    if not t.size:
        return math.nan
    with warnings.catch_warnings(action="ignore", category=UndefinedMetricWarning), np.errstate(all="ignore"):
        return float(skm.cohen_kappa_score(t, p, labels=np.arange(k)))  # NaN if undefined (0 / 0 before 1.9)


def log_loss(y_true: ArrayLike, probs: ArrayLike) -> float:
    """Mean negative log-likelihood of the true class, probabilities clipped to the float64 epsilon."""
    t, p = _inputs(y_true, probs)
    return float(skm.log_loss(t, p, labels=np.arange(p.shape[1])))


def roc_auc_ovr(y_true: ArrayLike, probs: ArrayLike) -> FloatArray:
    """Per-class one-vs-rest ROC AUC (ties count one half); NaN for a class with no positive or no negative case."""
    t, p = _inputs(y_true, probs)
    onehot = (t[:, None] == np.arange(p.shape[1])).astype(np.int64)
    positives = onehot.sum(axis=0)
    defined = (positives > 0) & (positives < t.size)
    auc = np.full(p.shape[1], np.nan)
    if defined.any():  # one (multilabel) call for all the defined classes: the bootstrap calls this per resample
        auc[defined] = skm.roc_auc_score(onehot[:, defined], p[:, defined], average=None)
    return auc


def roc_curve(
    y_true_binary: ArrayLike, scores: ArrayLike, *, drop_intermediate: bool = True
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """ROC curve of a binary problem: ``(fpr, tpr, thresholds)``, thresholds decreasing, the first one ``inf``;
    collinear points dropped unless ``drop_intermediate=False``; NaN rates when there are no negatives / positives."""
    y = np.asarray(y_true_binary).astype(bool).astype(np.int64)  # any non-zero label is positive
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError("y_true_binary and scores must be 1-D and of equal length")
    with warnings.catch_warnings(action="ignore", category=UndefinedMetricWarning):  # and the rate is NaN
        fpr, tpr, thresholds = skm.roc_curve(y, s, pos_label=1, drop_intermediate=drop_intermediate)
    return np.asarray(fpr, np.float64), np.asarray(tpr, np.float64), np.asarray(thresholds, np.float64)


def _reliability(y_true: ArrayLike, probs: ArrayLike, bins: int) -> tuple[IntArray, FloatArray, FloatArray]:
    """Per bin: count, sum of top-label confidences, number correct. Bin b holds (b/bins, (b+1)/bins], 0 in bin 0."""
    t, p = _inputs(y_true, probs)
    if bins < 1:
        raise ValueError("bins must be >= 1")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    b = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(b, minlength=bins).astype(np.int64)
    conf_sum = np.bincount(b, weights=confidence, minlength=bins).astype(np.float64)
    acc_sum = np.bincount(b, weights=correct, minlength=bins).astype(np.float64)
    return count, conf_sum, acc_sum


def expected_calibration_error(y_true: ArrayLike, probs: ArrayLike, bins: int = 15) -> float:
    """Top-label ECE over ``bins`` equal-width bins: ``sum_b (n_b / n) * |accuracy_b - mean confidence_b|``, the
    confidence of a case being its largest probability, and the case correct when its argmax is the true class."""
    count, conf_sum, acc_sum = _reliability(y_true, probs, bins)
    n = int(count.sum())
    return float(np.abs(acc_sum - conf_sum).sum() / n) if n else math.nan


def reliability_table(y_true: ArrayLike, probs: ArrayLike, bins: int = 15) -> list[dict[str, Any]]:
    """Reliability diagram, a row per bin of the ECE: ``lower``, ``upper`` (the bin is ``(lower, upper]``), ``count``,
    ``confidence`` (mean top probability) and ``accuracy`` (fraction correct), the last two ``None`` if empty."""
    count, conf_sum, acc_sum = _reliability(y_true, probs, bins)
    rows: list[dict[str, Any]] = []
    for b, c in enumerate(count.tolist()):
        conf, acc = (float(conf_sum[b] / c), float(acc_sum[b] / c)) if c else (None, None)
        rows.append({"lower": b / bins, "upper": (b + 1) / bins, "count": c, "confidence": conf, "accuracy": acc})
    return rows


def _nll_at(logits: FloatArray, y: IntArray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(y.size), y]))


def fit_temperature(
    logits: ArrayLike, y_true: ArrayLike, *, lower: float = 0.05, upper: float = 20.0, tol: float = 1e-5
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


def _bootstrap_samples(fn: Metric, y_true: IntArray, probs: FloatArray, n: int, seed: int) -> FloatArray:
    """``(n, m)`` values of a (vector-valued) statistic on ``n`` case resamples; undefined values are NaN."""
    rng = np.random.default_rng(seed)
    rows: list[FloatArray] = []
    for _ in range(n):
        idx = rng.integers(0, y_true.size, size=y_true.size)
        try:
            rows.append(np.atleast_1d(np.asarray(fn(y_true[idx], probs[idx]), dtype=np.float64)))
        except (ValueError, ZeroDivisionError):
            rows.append(np.array([math.nan]))
    width = max((r.size for r in rows), default=1)  # a resample whose statistic has another length is undefined
    out = np.array([r if r.size == width else np.full(width, np.nan) for r in rows]).reshape(n, width)
    out[~np.isfinite(out)] = np.nan
    return out


def _percentile_ci(samples: FloatArray, alpha: float) -> tuple[float, float]:
    valid = samples[np.isfinite(samples)]
    low, high = np.quantile(valid, [alpha / 2.0, 1.0 - alpha / 2.0]) if valid.size else (math.nan, math.nan)
    return float(low), float(high)


def bootstrap_ci(
    fn: Metric, y_true: ArrayLike, probs: ArrayLike, n: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` interval of ``fn(y_true, probs)``, resampling cases with replacement,
    deterministic for a given ``seed``. Resamples on which the metric is undefined (``fn`` returns NaN / inf or
    raises ``ValueError``) are skipped; ``(nan, nan)`` when none is defined."""
    t, p = _inputs(y_true, probs)
    if t.size == 0:
        return math.nan, math.nan
    return _percentile_ci(_bootstrap_samples(fn, t, p, n, seed)[:, 0], alpha)


def _label_stats(y_true: IntArray, probs: FloatArray, k: int) -> FloatArray:
    """Accuracy, kappa, macro F1, then per class precision, recall, F1, AUC (``3 + 4k`` values, NaN if undefined).

    Macro F1, the mean of the defined per-class F1s (classes in the truth or the predictions), is what
    ``f1_score(average="macro", zero_division=np.nan)`` returns, without a second pass per resample."""
    pred = probs.argmax(axis=1)
    precision, recall, f1 = precision_recall_f1(y_true, pred, k, zero_division=math.nan)
    macro_f1 = float(np.mean(f1[~np.isnan(f1)])) if not np.isnan(f1).all() else math.nan
    kappa = cohen_kappa(y_true, pred, k)
    return np.r_[accuracy(y_true, pred), kappa, macro_f1, precision, recall, f1, roc_auc_ovr(y_true, probs)]


def evaluate(
    y_true: ArrayLike,
    probs: ArrayLike,
    labels: Labels,
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
    the same ``n_boot`` case resamples (seeded). The precision of a class never predicted is undefined (``None``).
    """
    t, p = _inputs(y_true, probs)
    k = len(labels)
    if p.shape[1] != k:
        raise ValueError(f"{p.shape[1]} probability columns for {k} labels")
    if t.size == 0:
        raise ValueError("no cases to evaluate")
    point = _label_stats(t, p, k)
    cis = [(math.nan, math.nan)] * point.size
    if n_boot > 0:
        samples = _bootstrap_samples(lambda yt, pr: _label_stats(yt, pr, k), t, p, n_boot, seed)
        cis = [_percentile_ci(samples[:, j], alpha) for j in range(point.size)]

    def entry(j: int) -> dict[str, Any]:
        return {"value": _finite_or_none(point[j]), "ci": [_finite_or_none(cis[j][0]), _finite_or_none(cis[j][1])]}

    support = np.bincount(t, minlength=k)
    per_class = {
        str(label): {"support": int(support[c]), **{m: entry(3 + i * k + c) for i, m in enumerate(_PER_CLASS)}}
        for c, label in enumerate(labels)
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
        "confusion_matrix": confusion_matrix(t, p.argmax(axis=1), k).tolist(),
    }


def _encode(values: Sequence[str], index: Mapping[str, int], who: str) -> IntArray:
    try:
        return np.array([index[v] for v in values], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"{who}: unknown label {e.args[0]!r}") from None


def majority_vote(votes: IntArray, k: int, ties: TieRule = "exclude") -> IntArray:
    """Per-case plurality label of ``votes`` (``(readers, cases)`` class indices). A tie for the most votes is -1
    (undecided) with ``ties="exclude"``; with ``ties="first"`` the tied label that comes first in ``labels`` wins."""
    counts = np.eye(k, dtype=np.int64)[votes].sum(axis=0)  # (cases, k) votes per label
    winner: IntArray = counts.argmax(axis=1).astype(np.int64)
    if ties == "exclude":
        winner[(counts == counts.max(axis=1, keepdims=True)).sum(axis=1) > 1] = -1
    return winner


def _agreement(gold: IntArray, rater: IntArray, k: int) -> dict[str, Any]:
    g, r = gold[gold >= 0], rater[gold >= 0]  # the cases decided
    return {"accuracy": _finite_or_none(accuracy(g, r)), "kappa": _finite_or_none(cohen_kappa(g, r, k))}


def _decided(gold: IntArray) -> dict[str, int]:
    return {"n": int((gold >= 0).sum()), "n_ties": int((gold < 0).sum())}


def reader_study(
    reader_labels: Mapping[str, Labels], model_pred: Labels, labels: Labels, *, ties: TieRule = "exclude"
) -> dict[str, Any]:
    """Compare the model with human readers as the hip-hardware paper does (JSON-ready dict).

    ``reader_labels`` maps each reader to their label per case, ``model_pred`` is the model's, in one case order,
    drawn from ``labels``. The gold standard is the readers' :func:`majority_vote` (a tie leaves the case out, or
    with ``ties="first"`` goes to the label listed first). ``consensus``: the model's ``accuracy`` (agreement) and
    Cohen's ``kappa`` against all readers' majority, ``n`` cases decided, ``n_ties`` left out; ``leave_one_out``:
    per reader, that reader's and the model's against the majority of the *other* readers, on the same ``n``
    cases; ``mean``: those averaged over the readers (undefined ones skipped).
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
    loo: dict[str, Any] = {}
    for i, name in enumerate(names):
        gold = majority_vote(np.delete(votes, i, axis=0), k, ties)
        loo[name] = {**_decided(gold), "reader": _agreement(gold, votes[i], k), "model": _agreement(gold, model, k)}

    def mean_of(who: str, metric: str) -> float | None:
        vals = [v[who][metric] for v in loo.values() if v[who][metric] is not None]
        return float(np.mean(vals)) if vals else None

    return {
        "labels": [str(label) for label in labels],
        "readers": names,
        "n_cases": int(model.size),
        "ties": ties,
        "consensus": {**_decided(gold_all), "model": _agreement(gold_all, model, k)},
        "leave_one_out": loo,
        "mean": {who: {m: mean_of(who, m) for m in ("accuracy", "kappa")} for who in ("reader", "model")},
    }
