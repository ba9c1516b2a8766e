"""The project's callbacks inside a real (tiny) `model.fit`."""

import keras
import numpy as np
import pytest

from fer.callbacks import PeakMemory, TimeLimit, peak_rss_mb


def _tiny_fit(callbacks, epochs):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    x = np.zeros((8, 4), np.float32)
    y = np.tile(np.float32([1, 0]), (8, 1))
    return model.fit(x, y, epochs=epochs, callbacks=callbacks, verbose=0)


class FakeClock:
    """Each reading is `step` seconds after the last: epochs of a known length."""

    def __init__(self, step):
        self.now, self.step = 0.0, step

    def __call__(self):
        value, self.now = self.now, self.now + self.step
        return value


def test_time_limit_stops_after_the_last_epoch_that_fits(capsys):
    # One-minute epochs and a 3.5-minute budget: after epoch 3, a fourth would end at minute 4.
    limit = TimeLimit(3.5, clock=FakeClock(60.0))
    history = _tiny_fit([limit], epochs=100)
    assert len(history.history["loss"]) == 3 and limit.stopped_epoch == 2
    assert "Epoch 3: stopping, time limit: 3.0 of 3.5 minutes used" in capsys.readouterr().out


def test_time_limit_that_is_never_reached_leaves_training_alone():
    limit = TimeLimit(60, clock=FakeClock(1.0))
    assert len(_tiny_fit([limit], epochs=4).history["loss"]) == 4 and limit.stopped_epoch is None


def test_time_limit_must_be_positive():
    with pytest.raises(ValueError, match="minutes must be positive; got 0"):
        TimeLimit(0)


def test_peak_memory_is_recorded_every_epoch_and_is_at_least_the_current_memory():
    history = _tiny_fit([PeakMemory()], epochs=3).history
    peaks = history["peak_rss_mb"]
    assert len(peaks) == 3 and peaks == sorted(peaks)  # a high-water mark never falls
    with open("/proc/self/status") as status:  # Linux: the resident memory right now, in KiB
        current_mb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    assert peaks[-1] >= current_mb * 0.99 > 0
    assert peak_rss_mb() >= peaks[-1]
