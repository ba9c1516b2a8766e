"""The project's Keras callbacks: what a run records each epoch, and when it stops.

- `LearningRateLogger`: the rate each epoch trained at, as `learning_rate`.
- `PeakMemory`: the training process's peak resident memory, as `peak_rss_mb`.
- `TimeLimit`: stop after the last epoch that fits in a time budget.
- `SkipAutologValidationEcho`: one value per epoch in every autologged metric.
- `ReportEachEpoch`: hands an epoch's metric to someone who may stop the run (a sweep's pruner).

The first two put their value into the epoch's logs, so Keras's History, the
run's `history.json` and MLflow autologging all record it like any metric.
"""

from __future__ import annotations

import sys
import time

import keras
import mlflow

from fer.training.schedules import epochs_that_fit


class LearningRateLogger(keras.callbacks.Callback):
    """Puts the rate the optimizer used in this epoch into the epoch's logs as `learning_rate`.

    It must run before callbacks that change the rate (ReduceLROnPlateau) and
    before the loggers (History, MLflow autologging), so the value recorded
    for epoch e is the one epoch e trained with, and a step shows at the epoch
    that first ran at the new rate.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class PeakMemory(keras.callbacks.Callback):
    """Puts the process's peak resident set size so far, in MiB, into the epoch's logs as `peak_rss_mb`.

    The operating system keeps this high-water mark (getrusage's ru_maxrss), so
    it costs one system call an epoch and misses no short-lived peak between
    epochs. Host memory only: a GPU's memory is not counted. Where the `resource`
    module does not exist (Windows), nothing is recorded.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and (peak := peak_rss_mb()) is not None:
            logs["peak_rss_mb"] = peak


def peak_rss_mb() -> float | None:
    """This process's peak resident set size in MiB, or None where the platform cannot tell."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class TimeLimit(keras.callbacks.Callback):
    """Stops training after the last epoch that fits in `minutes` of training time.

    After each epoch it estimates the next one's duration as the mean of this
    sitting's epochs so far (the first includes graph tracing, so the estimate
    errs long) and stops when that would end past the limit. Training then ends
    as it does after early stopping: a finished run, best weights restored when
    EarlyStopping is set to. `stopped_epoch` is the 0-based epoch after which it
    stopped (None while it has not).

    Args:
        minutes: the budget for `model.fit`, from its start; must be positive.
        clock: a function returning seconds (tests pass a fake one).

    Example:
        model.fit(ds, epochs=1000, callbacks=[TimeLimit(60)])  # as many epochs as fit in an hour
    """

    def __init__(self, minutes: float, clock=time.monotonic):
        super().__init__()
        if not minutes > 0:
            raise ValueError(f"minutes must be positive; got {minutes!r}")
        self.seconds = 60.0 * minutes
        self.clock = clock
        self.stopped_epoch: int | None = None
        self._started = 0.0
        self._epochs = 0

    def on_train_begin(self, logs=None):
        self._started, self._epochs, self.stopped_epoch = self.clock(), 0, None

    def on_epoch_end(self, epoch, logs=None):
        self._epochs += 1
        elapsed = self.clock() - self._started
        next_epoch = elapsed / self._epochs
        if epochs_that_fit(elapsed, self._epochs, self.seconds) < 1:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            print(
                f"\nEpoch {epoch + 1}: stopping, time limit: {elapsed / 60:.1f} of {self.seconds / 60:g} minutes "
                f"used, and the next epoch would take about {next_epoch / 60:.1f} more."
            )


class ReportEachEpoch(keras.callbacks.Callback):
    """Hands `monitor`'s value to `report(epoch, value)` after every epoch; stops the run when told to.

    `report` gets the 1-based epoch and the value, and returns None to go on or
    an exception to stop the run with (a sweep's pruned trial: an exception that
    is both `fer.tracking.RunStopped` and Optuna's TrialPruned). The exception is
    raised when the next epoch begins, so the loggers that run after this
    callback (the checkpoint, MLflow) have recorded the epoch that decided it.
    After the last epoch nothing is raised: that run is complete.

    Args:
        monitor: a key of the epoch's logs, e.g. "val_accuracy".
        report: the function to call after every epoch.

    Example:
        def report(epoch, value):
            return RuntimeError("too slow") if epoch >= 3 and value < 0.3 else None
        model.fit(ds, validation_data=val, epochs=20, callbacks=[ReportEachEpoch("val_accuracy", report)])
    """

    def __init__(self, monitor: str, report):
        super().__init__()
        if not callable(report):
            raise TypeError(f"report must be a function of (epoch, value); got {report!r}")
        self.monitor = monitor
        self.report = report
        self.stop_with: BaseException | None = None

    def on_train_begin(self, logs=None):
        self.stop_with = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.stop_with is not None:
            raise self.stop_with

    def on_epoch_end(self, epoch, logs=None):
        if not logs or self.monitor not in logs:
            raise KeyError(f"ReportEachEpoch: the epoch's logs have no {self.monitor!r} "
                           f"(they have {sorted(logs or {})}); fit needs validation data for val_* metrics")
        self.stop_with = self.report(epoch + 1, float(logs[self.monitor]))


class SkipAutologValidationEcho(keras.callbacks.Callback):
    """Stops autologging from logging `validation_*` again at every validation pass.

    Inside fit, Keras runs validation through the same callbacks, and
    autologging's `on_test_end` logs `validation_loss` / `validation_accuracy`
    with no step (all at step 0), duplicating `val_loss` / `val_accuracy`,
    which are logged once per epoch. Autologging appends its callback to the
    list given to fit, so this callback finds it there when training begins.
    """

    def __init__(self, callbacks: list):
        super().__init__()
        self._callbacks = callbacks

    def on_train_begin(self, logs=None):
        for callback in self._callbacks:
            if isinstance(callback, mlflow.keras.MlflowCallback):
                callback.on_test_end = lambda logs=None: None
