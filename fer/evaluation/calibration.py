"""How far predicted probabilities can be trusted, and one temperature that makes them more so.

A classifier is *calibrated* when, of the faces it calls "happiness" with
probability 0.8, about 80 % are happy. Accuracy does not measure that; these do:

* **log-loss** (negative log-likelihood): the mean of ``-ln p[true class]``;
  it punishes a confident mistake without bound (scikit-learn's ``log_loss``).
* **expected calibration error** (ECE, Guo et al., *On Calibration of Modern
  Neural Networks*, ICML 2017; Naeini et al., AAAI 2015): each face's
  *confidence* is its highest probability and it is *correct* when that class
  is the true one. Confidences are put into ``n_bins`` equal-width bins over
  [0, 1], bin ``m`` holding ``((m - 1) / n_bins, m / n_bins]`` (right-closed,
  so a confidence on an edge goes to the lower bin). Then
  ``ECE = sum over bins of (faces in bin / all faces) * |accuracy(bin) - mean confidence(bin)|``:
  the mean gap between how often the model is right and how sure it says it
  is, weighted by where its predictions fall. 0 is perfect; empty bins count
  for nothing. 15 bins, as in Guo et al.
* a **reliability diagram** draws the bins: accuracy against mean confidence,
  the diagonal being perfect calibration (`fer.analysis.reports.plot_reliability_diagram`).

**Temperature scaling** (Guo et al.) divides a network's logits by one number
T > 0 fitted on held-out data: T > 1 softens over-confident probabilities,
T < 1 sharpens timid ones. It never changes which class is the most likely,
so accuracy, F1 and the confusion matrix stay as they are. The networks here
end in a softmax, so the logits are not at hand; the log-probabilities are
(``ln softmax(z) = z - logsumexp(z)``), and ``softmax(ln p / T)`` equals
``softmax(z / T)`` because the constant ``logsumexp(z) / T`` cancels.
`fit_temperature` finds the T that minimises the log-loss of a labelled set
(a bounded golden-section search over ln T: the log-loss is convex in 1/T,
hence has one minimum along ln T); `apply_temperature` rescales probabilities
with it, exactly as `fer.models.TemperatureScaling` does inside a served model.

Pure numpy (scikit-learn only inside `log_loss`): a served model imports this
module through `fer.models`, and its environment has no scikit-learn.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = [
    "DEFAULT_BINS",
    "PROBABILITY_FLOOR",
    "TEMPERATURE_BOUNDS",
    "Reliability",
    "apply_temperature",
    "class_indices",
    "expected_calibration_error",
    "fit_temperature",
    "log_loss",
    "reliability",
]

DEFAULT_BINS = 15
# Probabilities below this become it before their logarithm is taken: a float32
# softmax rounds far-off classes to exactly 0, whose log is -inf. It is float32's
# smallest normal number (ln = -87.3), so that `fer.models.TemperatureScaling`
# floors at the same value inside a float32 network.
PROBABILITY_FLOOR = float(np.finfo(np.float32).tiny)
# The search range of `fit_temperature`; a network that needs more than 50x is
# not one that a single temperature repairs.
TEMPERATURE_BOUNDS = (0.02, 50.0)


def class_indices(labels, classes: int, name: str = "labels") -> np.ndarray:
    """`labels` (N,) as integer class indices in 0..classes-1; ValueError naming `name` otherwise.

    Whole floats (1.0) are accepted and become ints; 0.5, -1 or `classes` are refused.

    Example:
        class_indices(np.array([0.0, 2.0]), 3)  # array([0, 2])
    """
    y = np.asarray(labels)
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f"{name} must be integer class indices")
        y = y.astype(int)
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"{name} must lie in 0..{classes - 1}; got {y.min()}..{y.max()}")
    return y


def _checked(labels, probabilities) -> tuple[np.ndarray, np.ndarray]:
    """Integer labels (N,) and float64 probabilities (N, K), rows renormalised; ValueError naming what is wrong."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be an N x K array with K >= 2 classes; got shape {p.shape}")
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(p):
        raise ValueError(f"labels must be one class index per row of probabilities ({len(p)}); got shape {y.shape}")
    if len(y) == 0:
        raise ValueError("cannot measure calibration on no predictions")
    y = class_indices(y, p.shape[1])
    if not np.isfinite(p).all() or p.min() < 0:
        raise ValueError("probabilities must be finite and non-negative")
    sums = p.sum(axis=1, keepdims=True)
    if np.any(np.abs(sums - 1) > 1e-3):
        row = int(np.argmax(np.abs(sums[:, 0] - 1)))
        raise ValueError(f"each row of probabilities must sum to 1; row {row} sums to {sums[row, 0]:.6f}")
    # A float32 softmax sums to 1 within ~1e-7; make it exact in float64.
    return y, p / sums


def log_loss(labels, probabilities) -> float:
    """Mean negative log-likelihood of the true classes (natural log), scikit-learn's `log_loss`.

    `labels`: integer class indices (N,); `probabilities`: N x K rows summing to
    1 (a float32 network's rounding is tolerated). Every one of the K classes
    counts, whether or not `labels` holds it.

    >>> round(log_loss([0, 1], [[0.8, 0.2], [0.4, 0.6]]), 6)  # -(ln 0.8 + ln 0.6) / 2
    0.366985
    """
    from sklearn.metrics import log_loss as sklearn_log_loss  # here: see the module's last paragraph

    y, p = _checked(labels, probabilities)
    return float(sklearn_log_loss(y, p, labels=np.arange(p.shape[1])))


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: ndarray fields make field-wise == ambiguous
class Reliability:
    """Confidence bins of a set of predictions: what a reliability diagram draws and ECE sums.

    `edges` has n_bins + 1 values from 0 to 1; bin m holds confidences in
    (edges[m], edges[m + 1]]. `accuracy` and `confidence` are NaN in empty bins.
    """

    edges: np.ndarray
    counts: np.ndarray  # faces per bin
    accuracy: np.ndarray  # share of the bin's faces whose most likely class is the true one
    confidence: np.ndarray  # the bin's mean highest probability

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean |accuracy - confidence| over the bins."""
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(np.sum(self.counts[filled] * gaps) / self.total)


def reliability(labels, probabilities, n_bins: int = DEFAULT_BINS) -> Reliability:
    """Bin the predictions by confidence (their highest probability) into `n_bins` equal-width bins.

    >>> bins = reliability([0, 1, 1], [[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]], n_bins=5)
    >>> bins.counts.tolist()  # 0.7 in (0.6, 0.8], 0.8 in (0.6, 0.8] (right-closed), 0.9 in (0.8, 1]
    [0, 0, 0, 2, 1]
    >>> float(bins.accuracy[3]), round(float(bins.confidence[3]), 6)  # one of 0.7 and 0.8 right; their mean
    (0.5, 0.75)
    """
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a whole number, 1 or more; got {n_bins!r}")
    y, p = _checked(labels, probabilities)
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left": a confidence equal to an inner edge counts the edges below it, i.e. falls in the lower bin.
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / counts
        mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / counts
    return Reliability(edges, counts, accuracy, mean_confidence)


def expected_calibration_error(labels, probabilities, n_bins: int = DEFAULT_BINS) -> float:
    """ECE over `n_bins` equal-width confidence bins (the module docstring gives the definition).

    >>> # 0.9 (right) in bin (0.867, 0.933], 0.7 (wrong) in (0.667, 0.733]: (|1 - 0.9| + |0 - 0.7|) / 2
    >>> round(expected_calibration_error([0, 1], [[0.9, 0.1], [0.7, 0.3]]), 6)
    0.4
    """
    return reliability(labels, probabilities, n_bins).ece


def _log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(probabilities, PROBABILITY_FLOOR))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def apply_temperature(probabilities, temperature: float) -> np.ndarray:
    """softmax(ln p / T) row by row: the probabilities a network's logits divided by T would give.

    The most likely class of every row stays the same. Float64 out.

    >>> apply_temperature([[0.8, 0.2]], 2.0).round(4)  # sqrt(0.8) : sqrt(0.2), normalised
    array([[0.6667, 0.3333]])
    """
    _check_temperature(temperature)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be an N x K array; got shape {p.shape}")
    return np.exp(_log_softmax(_log_probabilities(p) / temperature))


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating, np.integer)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number above 0; got {temperature!r}")


def _nll(log_p: np.ndarray, y: np.ndarray, temperature: float) -> float:
    return float(-_log_softmax(log_p / temperature)[np.arange(len(y)), y].mean())


def fit_temperature(labels, probabilities, bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
                    tolerance: float = 1e-5) -> float:
    """The temperature T in `bounds` that minimises the log-loss of `apply_temperature(probabilities, T)`.

    Golden-section search over ln T until the bracket is narrower than
    `tolerance` (relative to T). The log-loss is convex in 1/T, so it has
    one minimum along ln T and the search finds it; an optimum beyond the
    bounds returns the nearer bound. Fit it on a split the network did not
    train on (validation), never on the one it is then evaluated on.

    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(0, 2, (2000, 4))  # a calibrated model: labels drawn from its probabilities
    >>> labels = [rng.choice(4, p=row) for row in np.exp(_log_softmax(logits))]
    >>> overconfident = np.exp(_log_softmax(3 * logits))  # the same model, logits tripled
    >>> temperature = fit_temperature(labels, overconfident)  # about 3: what undoes the tripling
    >>> 2.7 < temperature < 3.3, log_loss(labels, apply_temperature(overconfident, temperature)) < log_loss(
    ...     labels, overconfident)
    (True, True)
    """
    low, high = bounds
    if not 0 < low < high or not math.isfinite(high):
        raise ValueError(f"bounds must be 0 < low < high < inf; got {bounds!r}")
    y, p = _checked(labels, probabilities)
    log_p = _log_probabilities(p)
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _nll(log_p, y, math.exp(c)), _nll(log_p, y, math.exp(d))
    while b - a > tolerance:
        if fc <= fd:  # the minimum lies in [a, d]
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _nll(log_p, y, math.exp(c))
        else:  # in [c, b]
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _nll(log_p, y, math.exp(d))
    best = math.exp((a + b) / 2)
    # The ends themselves are never evaluated inside the bracket: compare them too.
    return min((best, low, high), key=lambda t: _nll(log_p, y, t))
