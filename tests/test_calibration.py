"""fer.evaluation.calibration: log-loss, ECE and the reliability bins against hand-computed values; temperature scaling."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fer.evaluation.calibration
from fer.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    log_loss,
    reliability,
)

# Six faces, three classes. Confidence = the highest probability; 15 bins of width 1/15.
#   row  probabilities        true  predicted  confidence  bin (1/15 wide)           correct
#   0    0.90 0.05 0.05       0     0          0.90        13: (0.8667, 0.9333]      yes
#   1    0.62 0.30 0.08       1     0          0.62         9: (0.6000, 0.6667]      no
#   2    0.20 0.70 0.10       1     1          0.70        10: (0.6667, 0.7333]      yes
#   3    0.25 0.25 0.50       0     2          0.50         7: (0.4667, 0.5333]      no
#   4    0.05 0.88 0.07       1     1          0.88        13                        yes
#   5    0.10 0.03 0.87       0     2          0.87        13                        no
LABELS = np.array([0, 1, 1, 0, 1, 0])
PROBABILITIES = np.array([
    [0.90, 0.05, 0.05],
    [0.62, 0.30, 0.08],
    [0.20, 0.70, 0.10],
    [0.25, 0.25, 0.50],
    [0.05, 0.88, 0.07],
    [0.10, 0.03, 0.87],
])


def test_ece_equals_the_hand_computed_value():
    # Bin 13 holds rows 0, 4, 5: accuracy 2/3, mean confidence (0.90 + 0.88 + 0.87) / 3 = 0.8833.
    # The other bins hold one row each: |1 - 0.70| = 0.30, |0 - 0.62| = 0.62, |0 - 0.50| = 0.50.
    bin_13 = 3 / 6 * abs(2 / 3 - (0.90 + 0.88 + 0.87) / 3)
    expected = bin_13 + (0.62 + 0.30 + 0.50) / 6
    assert expected == pytest.approx(0.345)
    assert expected_calibration_error(LABELS, PROBABILITIES) == pytest.approx(expected, abs=1e-12)


def test_log_loss_equals_the_hand_computed_value():
    true_class_probability = [0.90, 0.30, 0.70, 0.25, 0.88, 0.10]
    expected = -sum(math.log(p) for p in true_class_probability) / 6
    assert log_loss(LABELS, PROBABILITIES) == pytest.approx(expected, abs=1e-12)


def test_reliability_bins_hold_the_hand_computed_counts_accuracies_and_confidences():
    bins = reliability(LABELS, PROBABILITIES)
    assert len(bins.counts) == 15 and bins.edges[0] == 0 and bins.edges[-1] == 1
    assert {i: int(n) for i, n in enumerate(bins.counts) if n} == {7: 1, 9: 1, 10: 1, 13: 3}
    assert bins.accuracy[13] == pytest.approx(2 / 3) and bins.confidence[13] == pytest.approx(0.8833333333)
    assert bins.accuracy[10] == 1 and bins.accuracy[9] == 0 and bins.confidence[7] == pytest.approx(0.5)
    assert np.isnan(bins.accuracy[0]) and np.isnan(bins.confidence[14])  # empty bins: no value, no weight
    assert bins.total == 6


def test_a_confidence_on_a_bin_edge_falls_in_the_lower_bin():
    # Bins (0, 0.5] and (0.5, 1]: 0.5 exactly is in the first.
    bins = reliability([0, 1], [[0.5, 0.5], [0.25, 0.75]], n_bins=2)
    assert bins.counts.tolist() == [1, 1]


def test_a_perfectly_calibrated_set_has_zero_ece_and_a_certain_mistake_the_largest():
    # In bin (0.733, 0.8], 3 of 4 right at confidence 0.75; elsewhere, always right at confidence 1.
    probabilities = [[0.75, 0.25]] * 4 + [[1.0, 0.0]] * 2
    assert expected_calibration_error([0, 0, 0, 1, 0, 0], probabilities) == pytest.approx(0, abs=1e-12)
    assert expected_calibration_error([1], [[1.0, 0.0]]) == pytest.approx(1.0)


def test_float32_probabilities_that_sum_to_one_within_rounding_are_taken():
    p = np.float32([[0.1, 0.2, 0.7]]) / np.float32(1.0000001)
    assert log_loss([2], p) == pytest.approx(-math.log(0.7), rel=1e-6)


def test_log_loss_counts_every_class_even_those_the_labels_lack():
    # sklearn infers the classes from the labels unless told: here only class 0 occurs.
    assert log_loss([0, 0], [[0.5, 0.3, 0.2], [0.8, 0.1, 0.1]]) == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2)


@pytest.mark.parametrize(
    "labels, probabilities, match",
    [
        ([0, 1], [[0.5, 0.5]], "one class index per row"),
        ([0], [[0.5, 0.2]], "row 0 sums to 0.700000"),
        ([3], [[0.5, 0.5]], r"labels must lie in 0..1; got 3..3"),
        ([0], [0.5, 0.5], "N x K"),
        ([0.5], [[0.5, 0.5]], "integer class indices"),
        ([0], [[np.nan, 1.0]], "finite"),
        ([], np.empty((0, 2)), "no predictions"),
    ],
)
def test_bad_input_is_refused_saying_what_is_wrong(labels, probabilities, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(labels, probabilities)


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), True])
def test_a_temperature_must_be_a_finite_positive_number(temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number above 0"):
        apply_temperature(PROBABILITIES, temperature)


# ------------------------------------------------------------------------ temperature scaling


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def overconfident_set(sharpen: float, n: int = 4000, k: int = 8, seed: int = 0):
    """Labels drawn from a calibrated model's probabilities, and that model's logits multiplied by `sharpen`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, (n, k))
    # Inverse-CDF sampling, one label per row: the first class whose cumulative probability passes u.
    labels = (np.cumsum(_softmax(logits), axis=1) < rng.random((n, 1))).sum(axis=1)
    return np.minimum(labels, k - 1), _softmax(sharpen * logits)


def test_temperature_scaling_undoes_deliberate_overconfidence():
    labels, overconfident = overconfident_set(sharpen=4.0)
    temperature = fit_temperature(labels, overconfident)
    assert temperature == pytest.approx(4.0, rel=0.1)  # the sharpening it has to undo
    calibrated = apply_temperature(overconfident, temperature)
    before, after = log_loss(labels, overconfident), log_loss(labels, calibrated)
    assert after < 0.75 * before
    assert expected_calibration_error(labels, calibrated) < 0.03 < 0.2 < expected_calibration_error(labels, overconfident)
    np.testing.assert_array_equal(calibrated.argmax(axis=1), overconfident.argmax(axis=1))  # accuracy untouched


def test_the_fitted_temperature_is_the_minimum_of_the_log_loss():
    labels, probabilities = overconfident_set(sharpen=0.5, n=1500)  # timid: T < 1 sharpens
    temperature = fit_temperature(labels, probabilities)
    assert temperature < 1
    loss = log_loss(labels, apply_temperature(probabilities, temperature))
    for nearby in (temperature * 0.97, temperature * 1.03):
        assert loss < log_loss(labels, apply_temperature(probabilities, nearby))


def test_a_calibrated_set_keeps_a_temperature_near_one():
    labels, probabilities = overconfident_set(sharpen=1.0)
    assert fit_temperature(labels, probabilities) == pytest.approx(1.0, abs=0.1)


def test_an_optimum_beyond_the_bounds_returns_the_nearer_bound():
    labels, overconfident = overconfident_set(sharpen=4.0, n=500)
    assert fit_temperature(labels, overconfident, bounds=(0.5, 2.0)) == 2.0


def test_zero_probabilities_from_a_float32_softmax_stay_finite():
    p = np.float32([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    scaled = apply_temperature(p, 20.0)
    assert np.isfinite(scaled).all() and (scaled > 0).all()
    assert math.isfinite(fit_temperature([0, 0], p))  # one certain mistake: the search still ends


@settings(max_examples=50, deadline=None)
@given(
    logits=st.lists(st.lists(st.floats(-20, 20), min_size=4, max_size=4), min_size=1, max_size=6),
    temperature=st.floats(0.05, 20),
)
def test_scaling_keeps_rows_distributions_and_their_most_likely_class(logits, temperature):
    probabilities = _softmax(np.array(logits))
    scaled = apply_temperature(probabilities, temperature)
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0, rtol=1e-9)
    np.testing.assert_allclose(scaled, _softmax(np.array(logits) / temperature), atol=1e-9)  # = dividing the logits
    top_two = np.sort(probabilities, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > 1e-9  # a near-tie may swap in rounding
    np.testing.assert_array_equal(scaled.argmax(axis=1)[clear], probabilities.argmax(axis=1)[clear])


def test_the_docstring_examples_run():
    result = doctest.testmod(fer.evaluation.calibration, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 6 and result.failed == 0


def test_importing_the_module_does_not_import_scikit_learn():
    """A served model imports fer.evaluation.calibration (through fer.models), and its environment has no scikit-learn."""
    import subprocess
    import sys

    code = "import sys, fer.evaluation.calibration; print('sklearn' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
