"""Correcting for rare classes after training: logit adjustment by the class prior.

A network trained on FER+ learns that happiness and neutral are common and
contempt and disgust rare (168 and 248 of 28,385 training faces), and its
argmax almost never names the rare ones. *Logit adjustment* (Menon et al.,
*Long-tail learning via logit adjustment*, ICLR 2021) corrects the decision
without retraining: subtract ``tau * ln prior`` from each face's logits, where
``prior`` is the class frequency seen in training. ``tau = 0`` is the plain
network; ``tau = 1`` is the rule that minimises the *balanced* error (the mean
of the per-class error rates); values between trade overall accuracy for
recall on rare classes. As with temperature scaling (`fer.evaluation.calibration`), the
networks end in a softmax, so the log-probabilities stand in for the logits
(the per-face constant cancels): the adjusted probabilities are
``softmax(ln p - tau * ln prior)``.

`fit_tau` picks ``tau`` on a held-out split (validation) from a grid in
[0, 1], the one with the highest macro-F1 (the smallest of equal ones, so a
split with nothing to gain keeps the plain network). BENCHMARKS.md measures
it on FER+ (issue #13), where class weights during training collapsed the run.

Fitting tau on validation and scoring it there flatters it: `cross_fit` says
what it is worth on faces that did not choose it (fitted on some folds of
validation, scored on the rest), and every run that fits tau logs that figure
beside the optimistic one.

`fer.models.LogitAdjustment` applies the same offsets inside a served model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold

from fer.evaluation.calibration import PROBABILITY_FLOOR

__all__ = ["TAU_GRID", "CrossFit", "adjust", "class_prior", "cross_fit", "fit_tau", "offsets"]

# tau from 0 (no correction) to 1 (the balanced-error rule), in steps of 0.05: beyond 1 the rare
# classes would be favoured more than their scarcity warrants.
TAU_GRID = tuple(round(0.05 * step, 2) for step in range(21))


def class_prior(targets) -> np.ndarray:
    """Each class's share of the training faces, from their N x K target rows (one-hot or vote shares).

    Laplace-smoothed (one imaginary face per class), so a class absent from
    training gets a small share instead of 0, whose logarithm would be -inf.

    >>> class_prior([[1, 0, 0], [1, 0, 0], [0, 1, 0]]).round(3)  # (2+1, 1+1, 0+1) / (3+3)
    array([0.5  , 0.333, 0.167])
    """
    t = np.asarray(targets, dtype=np.float64)
    if t.ndim != 2 or not len(t):
        raise ValueError(f"targets must be a non-empty N x K array; got shape {t.shape}")
    return (t.sum(axis=0) + 1.0) / (len(t) + t.shape[1])


def offsets(prior, tau: float) -> np.ndarray:
    """What logit adjustment adds to each class's log-probability: ``-tau * ln prior``.

    >>> offsets([0.5, 0.25], 1.0).round(4)
    array([0.6931, 1.3863])
    """
    prior = np.asarray(prior, dtype=np.float64)
    if prior.ndim != 1 or not np.all(prior > 0):
        raise ValueError(f"prior must be a vector of positive class shares; got {prior!r}")
    if not 0 <= tau <= 10:
        raise ValueError(f"tau must be a number from 0 to 10; got {tau!r}")
    return -tau * np.log(prior)


def adjust(probabilities, prior, tau: float) -> np.ndarray:
    """softmax(ln p - tau * ln prior) row by row (float64): the probabilities logit adjustment serves.

    >>> adjust([[0.6, 0.4]], [0.75, 0.25], 1.0).round(3)  # 0.6/0.75 : 0.4/0.25, normalised
    array([[0.333, 0.667]])
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be an N x K array; got shape {p.shape}")
    z = np.log(np.maximum(p, PROBABILITY_FLOOR)) + offsets(prior, tau)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_tau(labels, probabilities, prior, grid=TAU_GRID) -> float:
    """The tau of `grid` whose adjusted predictions have the highest macro-F1 on `labels`.

    The smallest tau wins a tie. Fit it on a split the network did not train
    on (validation).

    >>> prior = [0.9, 0.1]
    >>> labels = [0] * 6 + [1] * 4        # a rare class the network is timid about:
    >>> probabilities = [[0.9, 0.1]] * 6 + [[0.7, 0.3]] * 4
    >>> fit_tau(labels, probabilities, prior)  # the smallest that tips 0.7 : 0.3 (ln 7/3 < 0.4 ln 9)
    0.4
    """
    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    if len(y) != len(p) or not len(y):
        raise ValueError(f"labels and probabilities must have the same, non-zero length; got {len(y)} and {len(p)}")
    classes = np.arange(p.shape[1])
    scores = [f1_score(y, adjust(p, prior, tau).argmax(axis=1), labels=classes, average="macro", zero_division=0)
              for tau in grid]
    return float(grid[int(np.argmax(scores))])


@dataclasses.dataclass(frozen=True)
class CrossFit:
    """What `cross_fit` measured: accuracy and macro-F1 per repeat, and every fold's fitted tau."""

    accuracy: tuple[float, ...]
    macro_f1: tuple[float, ...]
    taus: tuple[float, ...]

    @property
    def mean_accuracy(self) -> float:
        return float(np.mean(self.accuracy))

    @property
    def mean_macro_f1(self) -> float:
        return float(np.mean(self.macro_f1))


def cross_fit(labels, probabilities, prior, folds: int = 2, repeats: int = 5, grid=TAU_GRID) -> CrossFit:
    """Logit adjustment scored honestly: each fold adjusted with the tau fitted on the other folds.

    The faces are split into `folds` stratified folds (scikit-learn's
    `StratifiedKFold`, shuffled with seeds 0 .. `repeats` - 1, so the figure
    repeats); every face is predicted with a tau it did not help to choose, and
    accuracy and macro-F1 are taken over all faces, once per repeat. Compare the
    means with the figures of tau fitted and scored on the same faces.

    >>> rng = np.random.default_rng(0)
    >>> labels = np.array([0] * 90 + [1] * 10)
    >>> rare = np.where(labels == 1, rng.uniform(0.25, 0.45, 100), rng.uniform(0.0, 0.2, 100))
    >>> result = cross_fit(labels, np.column_stack([1 - rare, rare]), [0.9, 0.1], repeats=3)
    >>> len(result.accuracy), len(result.taus), result.mean_macro_f1 > 0.9
    (3, 6, True)
    """
    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    if len(y) != len(p) or not len(y):
        raise ValueError(f"labels and probabilities must have the same, non-zero length; got {len(y)} and {len(p)}")
    if folds < 2 or repeats < 1:
        raise ValueError(f"cross-fitting needs folds >= 2 and repeats >= 1; got folds {folds}, repeats {repeats}")
    largest_class = np.bincount(y).max()
    if largest_class < folds:
        raise ValueError(f"cross-fitting with {folds} folds needs a class with at least {folds} faces; "
                         f"the largest has {largest_class}")
    classes = np.arange(p.shape[1])
    accuracy, macro_f1, taus = [], [], []
    for seed in range(repeats):
        predicted = np.empty_like(y)
        for fit, score in StratifiedKFold(folds, shuffle=True, random_state=seed).split(p, y):
            tau = fit_tau(y[fit], p[fit], prior, grid)
            predicted[score] = adjust(p[score], prior, tau).argmax(axis=1)
            taus.append(tau)
        accuracy.append(float(accuracy_score(y, predicted)))
        macro_f1.append(float(f1_score(y, predicted, labels=classes, average="macro", zero_division=0)))
    return CrossFit(tuple(accuracy), tuple(macro_f1), tuple(taus))
