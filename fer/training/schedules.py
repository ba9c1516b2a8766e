"""Learning-rate schedules that know the training budget.

Li, Yumer & Ramanan (*Budgeted Training*, ICLR 2020): when the budget is
fixed, a rate that decays to about zero exactly when the budget ends beats
step and plateau schedules at every budget they tried. `BudgetedDecay` does
that, after a short linear warm-up, updating the rate every step:

- `linear`: straight down from `learning_rate` to the floor;
- `cosine`: half a cosine wave from `learning_rate` to the floor.

The plan is `epochs` x steps per epoch. With a time budget it is the epochs
that fit in it, estimated from the measured epoch time by the same rule that
`fer.training.callbacks.TimeLimit` stops by, and re-estimated after every epoch: when an
epoch runs slower, the end moves earlier and the rest of the decay is
compressed into the steps that are left, so the rate reaches its floor on the
last step that fits whatever the clock did.
"""

from __future__ import annotations

import math
import time

import keras

SHAPES = ("linear", "cosine")


def epochs_that_fit(elapsed: float, epochs_run: int, budget_seconds: float) -> int:
    """How many more epochs fit in the budget, each taking the mean of the `epochs_run` so far.

    Example:
        >>> epochs_that_fit(elapsed=600.0, epochs_run=2, budget_seconds=3600.0)  # 5 min an epoch, 50 left
        10
    """
    if epochs_run < 1:
        raise ValueError(f"epochs_run must be at least 1; got {epochs_run!r}")
    mean = elapsed / epochs_run
    return max(0, math.floor((budget_seconds - elapsed) / mean)) if mean > 0 else 0


def decayed_rate(shape: str, progress: float, peak: float, floor: float) -> float:
    """The rate at `progress` (0: start of the decay, 1: its end) of a `shape` decay from `peak` to `floor`.

    Example:
        >>> decayed_rate("linear", 0.5, peak=1e-3, floor=0.0)
        0.0005
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}; got {shape!r}")
    progress = min(max(progress, 0.0), 1.0)
    fraction = 1.0 - progress if shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (peak - floor) * fraction


class BudgetedDecay(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before every training step: warm-up, then a decay ending with the plan.

    Step `s` (counted over the whole run, resumed sittings included) trains at
    `peak * (s + 1) / warmup_steps` during the warm-up, then at the `shape`
    decay from `peak` that reaches `peak * final_fraction` on the plan's last
    step. Without a budget the plan is `epochs * steps_per_epoch` steps. With
    `budget_minutes`, after every epoch the plan becomes the epochs that fit
    (see `epochs_that_fit`), at most `epochs`; when it moves, the decay goes
    on from the current rate and progress, so the rate never jumps.

    Args:
        shape: "linear" or "cosine".
        peak: the rate at the end of the warm-up (the configured learning_rate).
        steps_per_epoch: training steps (batches) in one epoch.
        epochs: the most epochs the run trains.
        warmup_epochs: length of the warm-up, in epochs (0: none).
        final_fraction: the floor, as a fraction of `peak`.
        budget_minutes: the sitting's time budget (0: none).
        clock: a function returning seconds (tests pass a fake one).

    Example:
        decay = BudgetedDecay("cosine", 1e-3, steps_per_epoch=len(ds), epochs=8, warmup_epochs=0.5)
        model.fit(ds, epochs=8, callbacks=[decay])
    """

    # What a checkpoint keeps, so a resumed run continues the same plan (see fer.training.checkpoints).
    STATE = ("total_steps", "anchor_step", "anchor_progress")

    def __init__(self, shape: str, peak: float, *, steps_per_epoch: int, epochs: int, warmup_epochs: float = 0.0,
                 final_fraction: float = 0.01, budget_minutes: float = 0.0, clock=time.monotonic):
        super().__init__()
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}; got {shape!r}")
        for name, value in (("peak", peak), ("steps_per_epoch", steps_per_epoch), ("epochs", epochs)):
            if not value > 0:
                raise ValueError(f"{name} must be positive; got {value!r}")
        if not 0 <= final_fraction < 1:
            raise ValueError(f"final_fraction must be in [0, 1); got {final_fraction!r}")
        if warmup_epochs < 0 or budget_minutes < 0:
            raise ValueError(f"warmup_epochs and budget_minutes must be >= 0; got {warmup_epochs!r}, {budget_minutes!r}")
        self.shape, self.peak, self.floor = shape, float(peak), float(peak) * final_fraction
        self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)
        self.budget_seconds, self.clock = 60.0 * budget_minutes, clock
        self.warmup_steps = min(round(warmup_epochs * steps_per_epoch), self.epochs * self.steps_per_epoch - 1)
        self.total_steps = self.epochs * self.steps_per_epoch
        self.anchor_step, self.anchor_progress = self.warmup_steps, 0.0
        self._epoch = 0
        self._started, self._epochs_run = 0.0, 0

    def rate(self, step: int) -> float:
        """The learning rate of training step `step` (0-based, over the whole run) under the current plan."""
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        return decayed_rate(self.shape, self._progress(step), self.peak, self.floor)

    def _progress(self, step: int) -> float:
        remaining = self.total_steps - 1 - self.anchor_step
        if remaining <= 0:
            return 1.0
        return self.anchor_progress + (1.0 - self.anchor_progress) * (step - self.anchor_step) / remaining

    def replan(self, total_steps: int, from_step: int) -> None:
        """End the decay at `total_steps`, going on from step `from_step`'s current progress."""
        if total_steps == self.total_steps:
            return
        if from_step >= self.warmup_steps:
            self.anchor_progress = min(max(self._progress(from_step), 0.0), 1.0)
            self.anchor_step = from_step
        self.total_steps = total_steps

    def on_train_begin(self, logs=None):
        self._started, self._epochs_run = self.clock(), 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate = self.rate(self._epoch * self.steps_per_epoch + batch)

    def on_epoch_end(self, epoch, logs=None):
        self._epochs_run += 1
        if not self.budget_seconds:
            return
        more = epochs_that_fit(self.clock() - self._started, self._epochs_run, self.budget_seconds)
        planned_epochs = min(self.epochs, epoch + 1 + more)
        self.replan(max(planned_epochs, epoch + 1) * self.steps_per_epoch, from_step=(epoch + 1) * self.steps_per_epoch)
