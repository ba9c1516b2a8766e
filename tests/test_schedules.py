"""Budget-aware learning-rate schedules: exact values, and the plan moving with a (fake) clock."""

import math

import keras
import numpy as np
import pytest

from fer.training.callbacks import TimeLimit
from fer.training.schedules import BudgetedDecay, decayed_rate, epochs_that_fit

PEAK = 1e-3


def decay(shape, **kwargs):
    # 10 epochs of 100 steps, a 50-step warm-up, floor 1e-5
    arguments = {"steps_per_epoch": 100, "epochs": 10, "warmup_epochs": 0.5, "final_fraction": 0.01, **kwargs}
    return BudgetedDecay(shape, PEAK, **arguments)


def test_linear_schedule_values_at_first_step_end_of_warmup_middle_and_last_step():
    schedule = decay("linear")
    assert schedule.rate(0) == pytest.approx(PEAK / 50)  # the warm-up starts near zero
    assert schedule.rate(49) == pytest.approx(PEAK)  # and ends at the peak
    assert schedule.rate(50) == pytest.approx(PEAK)  # where the decay starts
    # The decay runs over steps 50..999; halfway through, halfway between peak and floor.
    assert schedule.rate(50 + 949 / 2) == pytest.approx((PEAK + PEAK * 0.01) / 2)
    assert schedule.rate(999) == pytest.approx(PEAK * 0.01)  # the floor, on the last step


def test_cosine_schedule_values_at_first_step_end_of_warmup_middle_and_last_step():
    schedule = decay("cosine")
    assert schedule.rate(0) == pytest.approx(PEAK / 50)
    assert schedule.rate(49) == pytest.approx(PEAK)
    assert schedule.rate(50) == pytest.approx(PEAK)
    assert schedule.rate(50 + 949 / 2) == pytest.approx((PEAK + PEAK * 0.01) / 2)  # cos(pi/2) = 0
    quarter = 50 + 949 / 4
    assert schedule.rate(quarter) == pytest.approx(PEAK * 0.01 + PEAK * 0.99 * (1 + math.cos(math.pi / 4)) / 2)
    assert schedule.rate(999) == pytest.approx(PEAK * 0.01)


def test_without_warmup_the_first_step_trains_at_the_peak():
    assert decay("linear", warmup_epochs=0).rate(0) == pytest.approx(PEAK)


def test_decayed_rate_rejects_an_unknown_shape_and_clips_progress():
    with pytest.raises(ValueError, match="shape must be one of linear, cosine; got 'step'"):
        decayed_rate("step", 0.5, 1.0, 0.0)
    assert decayed_rate("cosine", 1.5, peak=1.0, floor=0.1) == pytest.approx(0.1)


def test_epochs_that_fit_matches_the_time_limit_rule():
    assert epochs_that_fit(600.0, 2, 3600.0) == 10
    assert epochs_that_fit(3000.0, 10, 3200.0) == 0  # 300 s an epoch, 200 s left
    with pytest.raises(ValueError):
        epochs_that_fit(1.0, 0, 10.0)


class ScriptedClock:
    """Time moves only when an epoch ends, by that epoch's scripted duration (see EpochDurations)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class EpochDurations(keras.callbacks.Callback):
    """First in the callback list: each epoch 'took' its scripted seconds before the others look at the clock."""

    def __init__(self, clock, durations):
        super().__init__()
        self.clock, self.durations = clock, list(durations)

    def on_epoch_end(self, epoch, logs=None):
        self.clock.now += self.durations[epoch]


class RateRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def _tiny_fit(callbacks, epochs, steps_per_epoch=4):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(PEAK), loss="categorical_crossentropy")
    x = np.zeros((2 * steps_per_epoch, 4), np.float32)
    y = np.tile(np.float32([1, 0]), (len(x), 1))
    return model.fit(x, y, batch_size=2, epochs=epochs, callbacks=callbacks, verbose=0)


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_a_slower_epoch_moves_the_end_earlier_and_the_rate_still_reaches_its_floor(shape):
    # A one-minute budget, 4 steps an epoch. Epochs of 10 s plan 6 epochs; the third takes
    # 20 s, so after it only one more fits: training stops after epoch 4 (TimeLimit's rule),
    # and the decay, re-planned after every epoch, ends exactly on that epoch's last step.
    clock = ScriptedClock()
    schedule = BudgetedDecay(shape, PEAK, steps_per_epoch=4, epochs=100, warmup_epochs=0.5,
                             budget_minutes=1, clock=clock)
    recorder = RateRecorder()
    callbacks = [EpochDurations(clock, [10, 10, 20, 10, 10, 10]), schedule,
                 TimeLimit(1, clock=clock), recorder]
    history = _tiny_fit(callbacks, epochs=100)

    assert len(history.history["loss"]) == 4
    rates = recorder.rates
    assert len(rates) == 16
    assert rates[0] == pytest.approx(PEAK / 2) and rates[1] == pytest.approx(PEAK)  # a 2-step warm-up
    assert rates[-1] == pytest.approx(PEAK * 0.01)  # the floor, on the last step that fit
    assert all(later <= earlier + 1e-12 for earlier, later in zip(rates[1:], rates[2:]))  # never jumps up
    assert schedule.total_steps == 16


def test_without_a_budget_the_plan_is_epochs_times_steps_and_ends_at_the_floor():
    recorder = RateRecorder()
    _tiny_fit([BudgetedDecay("linear", PEAK, steps_per_epoch=4, epochs=3), recorder], epochs=3)
    np.testing.assert_allclose(recorder.rates, np.linspace(PEAK, PEAK * 0.01, 12), rtol=1e-6)


def test_a_resumed_sitting_continues_the_same_plan():
    # Steps are counted over the whole run: a fit starting at epoch 2 (as a resume does)
    # trains at the rates the uninterrupted run would have used for epochs 3 and 4.
    whole = RateRecorder()
    _tiny_fit([BudgetedDecay("cosine", PEAK, steps_per_epoch=4, epochs=4, warmup_epochs=1), whole], epochs=4)
    resumed = RateRecorder()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(PEAK), loss="categorical_crossentropy")
    model.fit(np.zeros((8, 4), np.float32), np.tile(np.float32([1, 0]), (8, 1)), batch_size=2, epochs=4,
              initial_epoch=2, callbacks=[BudgetedDecay("cosine", PEAK, steps_per_epoch=4, epochs=4,
                                                        warmup_epochs=1), resumed], verbose=0)
    np.testing.assert_allclose(resumed.rates, whole.rates[8:], rtol=1e-6)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"shape": "step"}, "shape must be one of linear, cosine"),
        ({"steps_per_epoch": 0}, "steps_per_epoch must be positive; got 0"),
        ({"final_fraction": 1.0}, r"final_fraction must be in \[0, 1\); got 1.0"),
        ({"warmup_epochs": -1}, "warmup_epochs and budget_minutes must be >= 0"),
    ],
)
def test_bad_arguments_are_refused_with_what_was_given(arguments, message):
    values = {"shape": "linear", "peak": PEAK, "steps_per_epoch": 10, "epochs": 2, **arguments}
    with pytest.raises(ValueError, match=message):
        BudgetedDecay(values.pop("shape"), values.pop("peak"), **values)
