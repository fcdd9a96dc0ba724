"""Fitting one attribute's model on the users who have it, measured on users it was not fitted
on (5-fold cross-validation), the better of two methods kept:

    linear   multinomial logistic regression (a category; classes weighted by the inverse of
             their share, its regularisation C in 0.25, 1, 4 chosen by the same validation)
             or ridge regression (a number) on the text features; for a category, also
             with the texts' TF-IDF rows beside them (C in 1, 4), when there are texts
    knn      a similarity-weighted vote (or mean) of the 25 nearest labelled users

For a category the out-of-fold answers also fit its calibration (one temperature, by log-loss)
and its decision rule (argmax of p(c|x) / p(c)^power, power in 0, 0.5, 1, by macro-F1): a
rare class is then predicted as often as it is there, and the confidence served is a
calibrated probability of the value answered.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from .._types import AttrValue, category_key
from ._model import (
    CATEGORICAL,
    KNN,
    LINEAR,
    NUMERIC,
    AttributeModel,
    Inputs,
    Quality,
    knn_mean,
    knn_votes,
)

FOLDS = 5
MIN_LABELLED = 30  # users with the attribute, fewer: no model
MIN_CLASS_USERS = 5  # users per value: rarer values are not predicted
MAX_CLASSES = 50  # a category with more common values is not predicted
MAX_FIT_USERS = 50_000  # labelled users fitted on (a random sample above that)
MAX_KNN_USERS = 10_000  # labelled users a knn model keeps
NEIGHBOURS = 25
RIDGE = 1.0
LOGISTIC_C = (0.25, 1.0, 4.0)  # inverse regularisation strengths tried, the best kept by CV
TERMS_C = (1.0, 4.0)  # the same with the TF-IDF rows beside the text features
TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(4.0), 25))
PRIOR_POWERS = (0.0, 0.5, 1.0)


class NotPredictable(Exception):
    """Too few users have the attribute, or its values are too many or too few to learn."""


def kind_of(values: Sequence[AttrValue]) -> str:
    """A number column is numeric unless it holds only a few distinct values (flags)."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(values) and len(set(numbers)) > 2:
        return NUMERIC
    return CATEGORICAL


def fit_attribute(
    attribute: str,
    features: Inputs | np.ndarray,
    values: Sequence[AttrValue],
    *,
    text_dims: int,
    fingerprint: str,
    kind: str | None = None,
    seed: int = 0,
    tick: Callable[[], None] = lambda: None,
) -> AttributeModel:
    """The model of `attribute` from the users' inputs (text features, and TF-IDF rows if
    given) and their stored values."""
    kind = kind or kind_of(values)
    rng = np.random.default_rng(seed)
    x = features if isinstance(features, Inputs) else Inputs(features)
    if len(values) < MIN_LABELLED:
        raise NotPredictable(f"{len(values)} users have it; at least {MIN_LABELLED} needed")
    if len(values) > MAX_FIT_USERS:
        keep = np.sort(rng.choice(len(values), MAX_FIT_USERS, replace=False))
        x, values = x.rows(keep), [values[i] for i in keep]
    model = AttributeModel(
        attribute=attribute,
        kind=kind,
        method=LINEAR,
        classes=[],
        quality=Quality(users=len(values)),
        text_dims=text_dims,
        fingerprint=fingerprint,
        fitted_at=time.time(),
    )
    if kind == NUMERIC:
        return _fit_numeric(model, x.dense, np.asarray(values, np.float64), rng, tick)
    return _fit_categorical(model, x, [category_key(v) for v in values], rng, tick)


# ---------------------------------------------------------------- categories


def _fit_categorical(
    model: AttributeModel, inputs: Inputs, keys: list[str], rng: np.random.Generator, tick
) -> AttributeModel:
    counts = Counter(keys)
    classes = sorted(c for c, n in counts.items() if n >= MIN_CLASS_USERS)
    if len(classes) > MAX_CLASSES or len(counts) > len(keys) / 2:  # an id, a free text
        raise NotPredictable(
            f"{len(counts)} distinct values ({len(classes)} held by {MIN_CLASS_USERS}+ users); "
            f"at most {MAX_CLASSES} are predicted"
        )
    if len(classes) < 2:
        raise NotPredictable(f"fewer than 2 values held by {MIN_CLASS_USERS}+ users each")
    code = {c: i for i, c in enumerate(classes)}
    rows = np.array([i for i, k in enumerate(keys) if k in code])
    inputs, y = inputs.rows(rows), np.array([code[keys[i]] for i in rows], np.int64)
    x = inputs.dense
    both = inputs.joined() if inputs.terms is not None and inputs.terms.nnz else None
    n_classes = len(classes)
    prior = np.bincount(y, minlength=n_classes) / len(y)
    folds = _stratified_folds(y, rng)

    # (name, C, matrix) of every linear candidate
    linear = [(f"{LINEAR} C={c:g}", c, x) for c in LOGISTIC_C]
    if both is not None:
        linear += [(f"{LINEAR}+terms C={c:g}", c, both) for c in TERMS_C]
    oof = {m: np.zeros((len(y), n_classes)) for m in [*(n for n, _, _ in linear), KNN]}
    for f in range(FOLDS):
        train, test = folds != f, folds == f
        for name, c, matrix in linear:
            weights, bias = _logistic(matrix[train], y[train], n_classes, c)
            oof[name][test] = np.asarray(matrix[test] @ weights) + bias
        votes = knn_votes(x[test], x[train], y[train], n_classes, prior, NEIGHBOURS)
        oof[KNN][test] = np.log(votes + 1e-3)
        tick()

    scores, fitted = {}, {}
    for method, logits in oof.items():
        temperature = _temperature(logits, y)
        p = _softmax(logits / temperature)
        power, f1 = max(
            ((pw, _macro_f1(y, _decide(p, prior, pw), n_classes)) for pw in PRIOR_POWERS),
            key=lambda t: t[1],
        )
        scores[method], fitted[method] = f1, (temperature, power, p)
    best = max(scores, key=lambda m: (scores[m], m != KNN))  # a tie: the linear model
    method = KNN if best == KNN else LINEAR
    temperature, power, p = fitted[best]
    answer = _decide(p, prior, power)
    majority = np.full(len(y), int(np.argmax(prior)))

    model.method, model.classes = method, classes
    model.temperature, model.prior_power = float(temperature), float(power)
    q = model.quality
    q.users = len(y)
    q.accuracy = float(np.mean(answer == y))
    q.macro_f1 = float(scores[best])
    q.majority_accuracy = float(np.mean(majority == y))
    q.majority_macro_f1 = _macro_f1(y, majority, n_classes)
    q.calibration_error = _calibration_error(p[np.arange(len(y)), answer], answer == y)
    q.candidates = {m: round(float(s), 4) for m, s in scores.items()}
    if q.macro_f1 <= q.majority_macro_f1 and q.accuracy <= q.majority_accuracy:
        raise NotPredictable(
            f"held-out macro-F1 {q.macro_f1:.3f} and accuracy {q.accuracy:.3f}: no better than "
            "always answering the commonest value"
        )
    if method == LINEAR:
        _, c, matrix = next(entry for entry in linear if entry[0] == best)
        weights, bias = _logistic(matrix, y, n_classes, c)
        model.regularisation, model.terms = c, matrix is not x
        d = x.shape[1]
        model.arrays = {"weights": weights[:d], "bias": bias, "prior": prior.astype(np.float32)}
        if model.terms:
            model.arrays["term_weights"] = weights[d:]
    else:
        keep = _subsample(len(y), MAX_KNN_USERS, rng)
        model.neighbours = NEIGHBOURS
        model.arrays = {
            "vectors": x[keep].astype(np.float16),
            "labels": y[keep].astype(np.int32),
            "prior": prior.astype(np.float32),
        }
    tick()
    return model


def _logistic(
    x: np.ndarray | sp.csr_matrix, y: np.ndarray, n_classes: int, c: float
) -> tuple[np.ndarray, np.ndarray]:
    """(weights (d, classes), bias (classes,)) of a class-weighted logistic regression."""
    from sklearn.linear_model import LogisticRegression  # a second to import: when fitting

    lr = LogisticRegression(C=c, max_iter=1000, class_weight="balanced")
    lr.fit(x, y)
    weights = np.zeros((x.shape[1], n_classes), np.float32)
    bias = np.zeros(n_classes, np.float32)
    if n_classes == 2:  # one column for the second class: logits (0, z)
        weights[:, 1], bias[1] = lr.coef_[0], lr.intercept_[0]
    else:
        weights[:, lr.classes_] = lr.coef_.T
        bias[lr.classes_] = lr.intercept_
        missing = np.setdiff1d(np.arange(n_classes), lr.classes_)
        bias[missing] = -30.0  # a class absent from this fold is never answered
    return weights, bias


def _temperature(logits: np.ndarray, y: np.ndarray) -> float:
    def nll(t: float) -> float:
        p = _softmax(logits / t)
        return float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))

    return float(min(TEMPERATURES, key=nll))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _decide(p: np.ndarray, prior: np.ndarray, power: float) -> np.ndarray:
    return np.argmax(np.log(p + 1e-12) - power * np.log(prior), axis=1)


def _macro_f1(y: np.ndarray, answer: np.ndarray, n_classes: int) -> float:
    f1 = []
    for c in range(n_classes):
        tp = np.sum((answer == c) & (y == c))
        fp, fn = np.sum((answer == c) & (y != c)), np.sum((answer != c) & (y == c))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1))


def _calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: per confidence bin, |mean confidence - accuracy|, weighted
    by the bin's share of the answers."""
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap += inside.mean() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(gap)


def _stratified_folds(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    folds = np.empty(len(y), np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        folds[idx] = np.arange(len(idx)) % FOLDS
    return folds


def _subsample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= cap else np.sort(rng.choice(n, cap, replace=False))


# ---------------------------------------------------------------- numbers


def _fit_numeric(
    model: AttributeModel, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, tick
) -> AttributeModel:
    if np.ptp(y) == 0:
        raise NotPredictable("every user has the same value")
    folds = rng.permutation(len(y)) % FOLDS
    oof = {LINEAR: np.zeros(len(y)), KNN: np.zeros(len(y))}
    for f in range(FOLDS):
        train, test = folds != f, folds == f
        w, b = _ridge(x[train], y[train])
        oof[LINEAR][test] = x[test] @ w + b
        oof[KNN][test] = knn_mean(x[test], x[train], y[train], NEIGHBOURS)
        tick()
    mae = {m: float(np.mean(np.abs(p - y))) for m, p in oof.items()}
    method = LINEAR if mae[LINEAR] <= mae[KNN] else KNN
    model.method = method
    model.sigma = float(np.std(oof[method] - y))
    q = model.quality
    q.mae, q.baseline_mae = mae[method], float(np.mean(np.abs(y - np.median(y))))
    q.candidates = {m: round(v, 4) for m, v in mae.items()}
    if q.mae >= q.baseline_mae:
        raise NotPredictable(
            f"held-out mean absolute error {q.mae:.3g}: no better than always answering the "
            f"median ({q.baseline_mae:.3g})"
        )
    if method == LINEAR:
        w, b = _ridge(x, y)
        model.arrays = {"weights": w[:, None].astype(np.float32), "bias": np.array([b], np.float32)}
    else:
        keep = _subsample(len(y), MAX_KNN_USERS, rng)
        model.neighbours = NEIGHBOURS
        model.arrays = {"vectors": x[keep].astype(np.float16), "values": y[keep]}
    tick()
    return model


def _ridge(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    mx, my = x.mean(axis=0), y.mean()
    xc = (x - mx).astype(np.float64)
    w = np.linalg.solve(xc.T @ xc + RIDGE * np.eye(x.shape[1]), xc.T @ (y - my))
    return w, float(my - mx @ w)
