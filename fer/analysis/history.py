"""A training run's per-epoch histories and the measures read from them.

One place for what the compare table (`fer.analysis.compare`), the diagnostics
(`fer.analysis.diagnostics`) and the figures (`fer.analysis.reports`) all need, so the three
agree on every number:

* `read_history`: a logged run's histories, read once, one value per epoch
  (a step logged twice keeps its latest value, as a resumed run re-logs it);
* `best_epoch`: the best epoch of a series, NaN-safe (a diverged epoch is
  never the best) and first on ties, as Keras's strict improvement test;
* `change_std`: the std of the finite epoch-to-epoch changes (volatility);
* `gap_at`: train minus validation accuracy at an epoch;
* `learning_rate_steps` and `format_rate`: where the rate changed, and the
  compact way people write rates;
* `band`: the word for a value (STABILITY_BANDS, OVERFIT_BANDS).

A *history* is ``{metric_name: [value per epoch, ...]}`` as Keras's
``History.history``; list indices are 0-based epochs. No mlflow or tensorflow
import: `fer.analysis.reports` uses this module and must stay cheap to import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

REQUIRED_KEYS = ("accuracy", "loss", "val_accuracy", "val_loss")
HISTORY_KEYS = REQUIRED_KEYS + ("learning_rate",)

# Keras 3 logs the rate as "learning_rate"; Keras 2 pickles used "lr". The first one present wins.
LR_KEYS = ("learning_rate", "lr")
# Relative tolerance for "the rate changed": float32 round-trips of the same
# rate differ by ~1e-7 relative, a real schedule step is a factor like 0.1-0.5.
LR_RTOL = 1e-4

# Words for the std of epoch-to-epoch validation-accuracy changes (compare table and diagnostics).
STABILITY_BANDS = ((0.01, "stable"), (0.03, "moderately volatile"), (float("inf"), "volatile"))
# Words for train minus validation accuracy at the best epoch (compare table).
OVERFIT_BANDS = ((0.0, "none (validation above training)"), (0.05, "low"), (0.10, "moderate"),
                 (float("inf"), "high"))
NOT_MEASURABLE = "not measurable"


def read_history(client, run_id: str, keys: Sequence[str] = HISTORY_KEYS) -> dict[str, list[float]]:
    """`{key: [value per epoch]}` of a logged run, ordered by step; keys never logged are left out.

    `client` is an `mlflow.MlflowClient`. A step logged more than once keeps
    its latest value (by timestamp), so every epoch counts once.
    """
    history = {}
    for key in keys:
        by_step = {m.step: m.value for m in sorted(client.get_metric_history(run_id, key),
                                                    key=lambda m: (m.step, m.timestamp))}
        if by_step:
            history[key] = [by_step[step] for step in sorted(by_step)]
    return history


def series(history: dict, key: str) -> np.ndarray | None:
    """The values logged under `key` as a float array, or None when absent or empty."""
    values = history.get(key)
    if values is None or len(values) == 0:
        return None
    return np.asarray(values, dtype=float).reshape(-1)


def best_epoch(values, higher_is_better: bool = True) -> int:
    """0-based index of the best value; NaN epochs never count; first on ties.

    Raises ValueError when there is no value that is not NaN.

    >>> best_epoch([0.4, float("nan"), 0.5, 0.5])
    2
    >>> best_epoch([1.2, 0.9, 1.0], higher_is_better=False)
    1
    """
    values = np.asarray(values, dtype=float).reshape(-1)
    if not len(values) or np.all(np.isnan(values)):
        raise ValueError(f"no epoch has a value to rank (got {len(values)} values, all NaN or none)")
    return int(np.nanargmax(values) if higher_is_better else np.nanargmin(values))


def change_std(values, min_changes: int = 1) -> float | None:
    """Population std of the finite epoch-to-epoch changes; None with fewer than `min_changes` of them.

    >>> round(change_std([0.5, 0.6, 0.5]), 3)
    0.1
    """
    changes = np.diff(np.asarray(values, dtype=float).reshape(-1))
    changes = changes[np.isfinite(changes)]
    return float(np.std(changes)) if len(changes) >= min_changes else None


def gap_at(history: dict, epoch: int) -> float:
    """Train minus validation accuracy at 0-based `epoch` (NaN when either is NaN)."""
    return float(history["accuracy"][epoch] - history["val_accuracy"][epoch])


def learning_rates(history: dict) -> np.ndarray | None:
    """The per-epoch learning rate (`learning_rate`, else Keras 2's `lr`), or None when not logged."""
    for key in LR_KEYS:
        rates = series(history, key)
        if rates is not None:
            return rates
    return None


def learning_rate_steps(history: dict) -> list[tuple[int, float, float]]:
    """Epochs where the learning rate changed, as ``(epoch, old_rate, new_rate)``.

    `epoch` is the 0-based index of the first epoch that ran at the new rate.
    Empty when the history has no learning rate or it never changes. Changes
    within a relative tolerance (float32 noise) are not steps.

    >>> learning_rate_steps({"learning_rate": [1e-3, 1e-3, 2e-4]})
    [(2, 0.001, 0.0002)]
    """
    rates = learning_rates(history)
    if rates is None:
        return []
    steps = []
    for epoch in range(1, len(rates)):
        old, new = rates[epoch - 1], rates[epoch]
        # atol=0: rates are tiny (1e-5), an absolute tolerance would hide real steps.
        if not np.isclose(new, old, rtol=LR_RTOL, atol=0.0):
            steps.append((epoch, float(old), float(new)))
    return steps


def marked_rate_steps(history: dict) -> list[tuple[int, float, float]]:
    """The learning-rate steps worth marking on a plot: none when the rate decays continuously.

    A schedule that changes the rate every step (fer.training.schedules) changes it at
    every epoch boundary; marking each would bury the curves. A rate that
    changed at 3 or more boundaries and at more than half of them is taken as
    such a decay.

    >>> marked_rate_steps({"learning_rate": [1e-3, 8e-4, 6e-4, 4e-4, 2e-4]})
    []
    """
    steps = learning_rate_steps(history)
    boundaries = max(len(learning_rates(history) if learning_rates(history) is not None else []) - 1, 0)
    return [] if len(steps) >= 3 and len(steps) > boundaries / 2 else steps


def format_rate(rate: float) -> str:
    """1e-4, 5e-5, 3.2e-4: the compact scientific form people write rates in.

    >>> format_rate(0.00032), format_rate(1e-3)
    ('3.2e-4', '1e-3')
    """
    if rate == 0 or not np.isfinite(rate):
        return f"{rate:g}"
    mantissa, exponent = f"{rate:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def band(value: float, bands) -> str:
    """The word of the first band whose upper limit is above `value` (a limit of 0 includes 0).

    NaN has no band: NOT_MEASURABLE.

    >>> band(0.02, STABILITY_BANDS), band(0.0, OVERFIT_BANDS), band(float("nan"), OVERFIT_BANDS)
    ('moderately volatile', 'none (validation above training)', 'not measurable')
    """
    if math.isnan(value):
        return NOT_MEASURABLE
    return next(label for limit, label in bands if value < limit or (limit == 0.0 and value <= 0.0))
