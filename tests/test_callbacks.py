"""The project's callbacks inside a real (tiny) `model.fit`."""

import keras
import numpy as np
import pytest

from fer.training.callbacks import PeakMemory, ReportEachEpoch, TimeLimit, peak_rss_mb


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


class EpochsSeen(keras.callbacks.Callback):
    """The 0-based epochs whose end reached this callback (one that runs after the reporter)."""

    def __init__(self):
        super().__init__()
        self.ended = []

    def on_epoch_end(self, epoch, logs=None):
        self.ended.append(epoch)


def test_report_each_epoch_stops_with_the_reported_error_once_the_deciding_epoch_is_recorded():
    reports = []

    def report(epoch, value):
        reports.append((epoch, value))
        return RuntimeError(f"stop after epoch {epoch}") if epoch == 2 else None

    seen = EpochsSeen()
    with pytest.raises(RuntimeError, match="stop after epoch 2"):
        _tiny_fit([ReportEachEpoch("loss", report), seen], epochs=5)
    assert [epoch for epoch, _ in reports] == [1, 2]  # 1-based, and nothing after the decision
    assert seen.ended == [0, 1]  # the later callback recorded the deciding epoch before the run stopped
    assert reports[1][1] < reports[0][1]  # the values are the epochs' losses (SGD lowers them)


def test_report_each_epoch_lets_a_run_whose_last_epoch_decided_to_stop_complete():
    history = _tiny_fit([ReportEachEpoch("loss", lambda epoch, value: RuntimeError("late"))], epochs=1)
    assert len(history.history["loss"]) == 1


def test_report_each_epoch_names_a_metric_the_logs_do_not_have():
    with pytest.raises(KeyError, match="no 'val_accuracy'.*fit needs validation data"):
        _tiny_fit([ReportEachEpoch("val_accuracy", lambda epoch, value: None)], epochs=1)
