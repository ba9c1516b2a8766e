"""Logit adjustment (fer.evaluation.logit_adjustment): the prior, the adjusted probabilities, the fitted tau and its cross-fitted score."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from fer.evaluation.logit_adjustment import TAU_GRID, adjust, class_prior, cross_fit, fit_tau, offsets


def test_the_prior_is_the_laplace_smoothed_share_of_training_targets_hard_or_soft():
    one_hot = np.eye(3)[[0, 0, 0, 1]]
    np.testing.assert_allclose(class_prior(one_hot), [4 / 7, 2 / 7, 1 / 7])  # an absent class keeps a share
    votes = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(class_prior(votes), [2.5 / 5, 1.5 / 5, 1 / 5])


def test_adjusting_divides_each_probability_by_the_prior_to_the_power_tau_and_renormalises():
    p = np.array([[0.6, 0.25, 0.15], [0.2, 0.5, 0.3]])
    prior = np.array([0.6, 0.3, 0.1])
    for tau in (0.0, 0.5, 1.0):
        expected = p / prior**tau
        np.testing.assert_allclose(adjust(p, prior, tau), expected / expected.sum(axis=1, keepdims=True))
    assert adjust(p, prior, 1.0)[0].argmax() == 2  # 0.6/0.6 < 0.15/0.1: the rare class wins the first face
    np.testing.assert_allclose(offsets(prior, 0.5), -0.5 * np.log(prior))


def test_fit_tau_recovers_the_rare_class_a_timid_network_misses_and_keeps_zero_when_nothing_is_missed():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 900 + [1] * 100)
    prior = np.array([0.9, 0.1])
    # the network sees the rare class but never dares: its faces score 0.25-0.45 for it
    rare_score = np.where(labels == 1, rng.uniform(0.25, 0.45, 1000), rng.uniform(0.0, 0.2, 1000))
    timid = np.column_stack([1 - rare_score, rare_score])
    assert f1_score(labels, timid.argmax(1), average="macro") < 0.5  # class 1 never predicted
    tau = fit_tau(labels, timid, prior)
    assert 0 < tau <= 1 and tau in TAU_GRID
    assert f1_score(labels, adjust(timid, prior, tau).argmax(1), average="macro") == 1.0

    confident = np.column_stack([1 - (labels == 1) * 0.99 - 0.005, (labels == 1) * 0.99 + 0.005])
    assert fit_tau(labels, confident, prior) == 0.0  # nothing to gain: the plain network


def _timid(seed, n=1000, rare_share=0.1):
    """Labels of a two-class problem and a network that sees the rare class but never dares name it."""
    rng = np.random.default_rng(seed)
    labels = (rng.uniform(size=n) < rare_share).astype(int)
    rare_score = np.where(labels == 1, rng.uniform(0.25, 0.45, n), rng.uniform(0.0, 0.3, n))
    return labels, np.column_stack([1 - rare_score, rare_score])


def test_cross_fitting_scores_each_fold_with_a_tau_fitted_on_the_others():
    labels, probabilities = _timid(0)
    prior = class_prior(np.eye(2)[labels])
    result = cross_fit(labels, probabilities, prior, folds=2, repeats=3)
    assert len(result.accuracy) == len(result.macro_f1) == 3 and len(result.taus) == 6
    assert all(tau in TAU_GRID and tau > 0 for tau in result.taus)  # each half finds the rare class
    assert result.mean_macro_f1 > f1_score(labels, probabilities.argmax(1), average="macro") + 0.2
    assert cross_fit(labels, probabilities, prior, repeats=3) == result  # seeded: the figure repeats


def test_cross_fitting_with_more_folds_than_faces_per_class_is_refused():
    with pytest.raises(ValueError, match="needs a class with at least 2 faces"):
        cross_fit([0, 1], [[0.6, 0.4], [0.4, 0.6]], [0.5, 0.5])


@pytest.mark.parametrize("call, match", [
    (lambda: class_prior(np.zeros((0, 3))), "non-empty N x K"),
    (lambda: offsets([0.5, 0.0], 1.0), "positive class shares"),
    (lambda: offsets([0.5, 0.5], -1.0), "tau must be a number from 0 to 10"),
    (lambda: adjust([0.5, 0.5], [0.5, 0.5], 1.0), "N x K array"),
    (lambda: fit_tau([0, 1], [[0.5, 0.5]], [0.5, 0.5]), "same, non-zero length"),
])
def test_bad_input_is_refused_with_what_was_expected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
