"""Diagnostics of one training run: the analysis people wrote by hand from the curves, computed.

Everything comes from the run itself: its per-epoch histories (`accuracy`,
`loss`, `val_accuracy`, `val_loss`, `learning_rate`), its params (`config.*`,
`model.dropout_rates`) and its evaluation (`confusion_matrix.json`). Each
statement carries the numbers behind it, and a rule decides whether it is made
at all: where there are too few epochs, or a change is within the run's own
epoch-to-epoch noise, the text says so instead of claiming an effect.

What is computed, and the rules (thresholds are the named constants below):

* Learning-rate steps (`fer.analysis.history.learning_rate_steps`). For each step, the
  mean val_accuracy and val_loss over up to LR_WINDOW epochs from the first
  epoch at the new rate, against up to LR_WINDOW epochs before it; windows
  stop at the neighbouring steps. A change is *clear* when it is larger than
  NOISE_MULTIPLIER x the std of the epoch-to-epoch changes over up to
  NOISE_WINDOW epochs at the old rate, and larger than a floor:
  MIN_ACCURACY_EFFECT of accuracy, MIN_LOSS_EFFECT (relative) of the loss
  before. With fewer than LR_MIN_WINDOW epochs at the new rate, or fewer than
  NOISE_MIN_EPOCHS at the old rate, the step is "too few epochs to judge".
  The wording is "followed by": a measured sequence, not a proven cause.
* Train-validation gap: train minus validation accuracy at every epoch. Its
  sign at the end is the mean over the last GAP_TAIL epochs, "about equal"
  within GAP_TOLERANCE. When validation is above training, the regularizers
  the configuration really has (dropout rates > 0, non-zero augmentation,
  label smoothing > 0) are listed as possible causes, never as findings.
* Overfitting onset: the first epoch after which validation loss rises at
  each of at least OVERFIT_MIN_RISES consecutive epochs while training loss
  falls at each of them; otherwise "none detected".
* Stability: the std of the epoch-to-epoch changes of val_accuracy
  (`fer.analysis.history.change_std`, as the compare table) before and after the first learning-rate step
  (the change across the step itself belongs to neither side), or over the
  whole run when there is no step; words from STABILITY_BANDS; "lower" or
  "higher" after the step only beyond a factor of VOLATILITY_RATIO.
* Convergence: the best epoch by early stopping's monitor
  (`config.early_stopping.monitor`; DEFAULT_MONITOR when absent, as the
  project's default), first on ties as Keras counts it. Either the best is the
  last epoch (more epochs may help), early stopping ended training before
  `config.epochs` (and restored the best weights or not), or training ran all
  its epochs and the best came earlier.
* Weakest classes, from the confusion matrix (rows true, columns predicted):
  the LOWEST_RECALL_COUNT classes with the lowest recall (a class with every
  face right is never listed) and the TOP_CONFUSIONS largest off-diagonal
  counts, with counts and shares of the true class. Classes with no faces in
  the split are named, never scored.

Epochs are 1-based in every text and in `Diagnostics.to_dict()` (whose
"epoch_numbering" says so); accuracies and gaps are fractions in the JSON and
percentage points in the text.

Entry points: `diagnose` (pure, plain data in), `diagnose_run` (reads a run
from MLflow), `log_diagnostics` (diagnostics.md and diagnostics.json as run
artifacts), `compare_rows` (the baseline-vs-final rows).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Run

from fer.analysis.history import (
    HISTORY_KEYS,
    REQUIRED_KEYS,
    STABILITY_BANDS,
    band,
    best_epoch,
    change_std,
    format_rate,
    learning_rate_steps,
    read_history,
)
from fer.tracking import TAG_STOPPED_BY

# ----------------------------------------------------------------------- rules

# Learning-rate steps. 3 epochs each side is what people eyeball on a curve;
# windows of 1 epoch would compare single noisy points.
LR_WINDOW = 3
LR_MIN_WINDOW = 2
# Noise is measured on the old rate's last epochs only: the fast rise of the
# first epochs is not noise and would hide every later effect.
NOISE_WINDOW = 8
NOISE_MIN_EPOCHS = 3  # 2 epoch-to-epoch changes: the fewest a std can be taken of
NOISE_MULTIPLIER = 2.0
MIN_ACCURACY_EFFECT = 0.01  # 1 point: below that no one would call it an effect
MIN_LOSS_EFFECT = 0.02  # 2% of the loss before: loss scales with label smoothing and class count

# Train-validation gap: the end state is the mean of the last epochs, not one point.
GAP_TAIL = 3
GAP_TOLERANCE = 0.01  # within 1 point the two are "about equal"

OVERFIT_MIN_RISES = 3

STABILITY_MIN_CHANGES = 2
VOLATILITY_RATIO = 1.5

DEFAULT_MONITOR = "val_loss"  # fer.config.EarlyStopping's default
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")

# What may make training accuracy lower than validation accuracy, as the params record them.
REGULARIZER_KINDS = ("dropout", "augmentation", "label smoothing")

LOWEST_RECALL_COUNT = 3
TOP_CONFUSIONS = 3

CONFUSION_ARTIFACT = "confusion_matrix.json"
MARKDOWN_ARTIFACT = "diagnostics.md"
JSON_ARTIFACT = "diagnostics.json"

RULES = {
    "lr_window": LR_WINDOW,
    "lr_min_window": LR_MIN_WINDOW,
    "noise_window": NOISE_WINDOW,
    "noise_min_epochs": NOISE_MIN_EPOCHS,
    "noise_multiplier": NOISE_MULTIPLIER,
    "min_accuracy_effect": MIN_ACCURACY_EFFECT,
    "min_loss_effect_relative": MIN_LOSS_EFFECT,
    "gap_tail": GAP_TAIL,
    "gap_tolerance": GAP_TOLERANCE,
    "overfit_min_rises": OVERFIT_MIN_RISES,
    "stability_bands": [[limit if np.isfinite(limit) else None, label] for limit, label in STABILITY_BANDS],
    "volatility_ratio": VOLATILITY_RATIO,
    "lowest_recall_count": LOWEST_RECALL_COUNT,
    "top_confusions": TOP_CONFUSIONS,
}

# ------------------------------------------------------------------ the findings


@dataclass(frozen=True)
class StepEffect:
    """One learning-rate step and what followed it. Epoch ranges are 1-based and inclusive."""

    epoch: int  # the first epoch at the new rate
    old_rate: float
    new_rate: float
    verdict: str  # "clear", "no clear effect" or "too few epochs"
    reason: str | None  # why too few
    before_first: int | None
    before_last: int | None
    after_first: int | None
    after_last: int | None
    val_accuracy_before: float | None  # window means
    val_accuracy_after: float | None
    val_accuracy_change: float | None
    val_loss_before: float | None
    val_loss_after: float | None
    val_loss_change: float | None
    noise_epochs: int  # epochs at the old rate the noise was measured on
    val_accuracy_noise: float | None  # std of epoch-to-epoch changes
    val_loss_noise: float | None
    val_accuracy_threshold: float | None
    val_loss_threshold: float | None
    val_accuracy_effect: str | None  # "rise", "drop" or "within noise"
    val_loss_effect: str | None  # "fall", "rise" or "within noise"

    def _head(self) -> str:
        rates = f"{format_rate(self.old_rate)} -> {format_rate(self.new_rate)}"
        return f"Learning-rate step at epoch {self.epoch} ({rates})"

    def _windows(self) -> str:
        return (f"mean over {_epochs(self.after_first, self.after_last)} vs "
                f"{_epochs(self.before_first, self.before_last)}")

    def _accuracy_threshold(self) -> str:
        return f"{_points(self.val_accuracy_threshold, signed=False)} points"

    def _accuracy_clause(self) -> str:
        """The accuracy part: a measured rise/drop, or a change within noise."""
        if self.val_accuracy_effect == "within noise":
            return (f"validation accuracy changed by {_points(self.val_accuracy_change)} points, within noise "
                    f"(threshold {self._accuracy_threshold()})")
        return (f"a {_points(abs(self.val_accuracy_change), signed=False)}-point {self.val_accuracy_effect} in "
                f"validation accuracy ({self.val_accuracy_before:.1%} -> {self.val_accuracy_after:.1%}, "
                f"{self._windows()}; noise threshold {self._accuracy_threshold()})")

    def _loss_clause(self) -> str:
        if self.val_loss_effect == "within noise":
            return (f"validation loss changed by {self.val_loss_change:+.3f}, within noise "
                    f"(threshold {self.val_loss_threshold:.3f})")
        return (f"a {abs(self.val_loss_change):.3f} {self.val_loss_effect} in validation loss "
                f"({self.val_loss_before:.3f} -> {self.val_loss_after:.3f}; threshold {self.val_loss_threshold:.3f})")

    def statement(self) -> str:
        if self.verdict == "too few epochs":
            return f"{self._head()}: too few epochs to judge its effect ({self.reason})."
        if self.verdict == "no clear effect":
            return (
                f"{self._head()}: no clear effect: validation accuracy changed by "
                f"{_points(self.val_accuracy_change)} points and validation loss by {self.val_loss_change:+.3f} "
                f"({self._windows()}), within the run's noise thresholds ({self._accuracy_threshold()}, "
                f"{self.val_loss_threshold:.3f})."
            )
        # Clear changes are stated first; a change within noise is named as such, never as an effect.
        clauses = [(self.val_accuracy_effect, self._accuracy_clause()), (self.val_loss_effect, self._loss_clause())]
        clear = [text for effect, text in clauses if effect != "within noise"]
        within = [text for effect, text in clauses if effect == "within noise"]
        return f"{self._head()}: followed by {' and '.join(clear)}" + "".join(f"; {w}" for w in within) + "."

    def short(self) -> str:
        """One clause for the end-of-training summary."""
        head = f"epoch {self.epoch} ({format_rate(self.old_rate)} -> {format_rate(self.new_rate)})"
        if self.verdict == "too few epochs":
            return f"{head}: too few epochs to judge"
        if self.verdict == "no clear effect":
            return f"{head}: no clear effect"
        if self.val_accuracy_effect in ("rise", "drop"):
            return f"{head}: followed by a {_points(abs(self.val_accuracy_change), signed=False)}-point " \
                   f"{self.val_accuracy_effect} in val. accuracy"
        return f"{head}: followed by a {abs(self.val_loss_change):.3f} {self.val_loss_effect} in val. loss"


@dataclass(frozen=True)
class LearningRates:
    logged: bool  # was a learning rate recorded at all
    initial_rate: float | None
    steps: tuple[StepEffect, ...]
    schedule: str | None = None  # "linear" / "cosine": a continuous decay (fer.training.schedules), which has no steps
    final_rate: float | None = None

    def statements(self, epochs: int) -> list[str]:
        if not self.logged:
            return ["No learning rate was logged, so learning-rate steps cannot be identified."]
        if self.schedule:
            return [f"The learning rate followed a {self.schedule} decay, updated every step rather than in "
                    f"steps: {format_rate(self.initial_rate)} at the end of epoch 1, "
                    f"{format_rate(self.final_rate)} at the end of epoch {epochs}."]
        if not self.steps:
            return [f"The learning rate stayed at {format_rate(self.initial_rate)} for all {epochs} epochs."]
        return [step.statement() for step in self.steps]


@dataclass(frozen=True)
class Gap:
    """Train minus validation accuracy (fractions; positive: training above)."""

    per_epoch: tuple[float | None, ...]  # index i is epoch i + 1
    train_above_epochs: int
    validation_above_epochs: int
    widest_epoch: int
    widest: float
    best_epoch: int  # by the convergence monitor
    at_best: float | None
    tail_first: int
    tail_last: int
    tail_mean: float | None  # None: no finite gap in the last epochs
    sign: str  # "train above validation", "validation above train", "about equal" or "unknown"
    regularizers: tuple[str, ...] | None  # present in the configuration; None: configuration unknown
    unrecorded: tuple[str, ...]  # regularizer kinds the params say nothing about
    possible_causes: tuple[str, ...]  # the regularizers, when validation is above training

    def statements(self) -> list[str]:
        epochs = len(self.per_epoch)
        points = [(1, "")] + ([(self.best_epoch, " (best)")] if self.best_epoch not in (1, epochs) else [])
        points += [(epochs, " (last)")] if epochs > 1 else []
        where = ", ".join(f"{_points_or_na(self.per_epoch[e - 1])} points at epoch {e}{label}" for e, label in points)
        lines = [
            f"Train minus validation accuracy: {where}; widest {_points(self.widest)} points at epoch "
            f"{self.widest_epoch}. Training was above validation in {self.train_above_epochs} of {epochs} "
            f"epochs, validation above training in {self.validation_above_epochs}."
        ]
        if self.sign == "unknown":
            return lines + [f"The gap over {_epochs(self.tail_first, self.tail_last)} is not measurable "
                            "(no finite accuracies there)."]
        tail = f"mean gap {_points(self.tail_mean)} points over {_epochs(self.tail_first, self.tail_last)}"
        if self.sign == "train above validation":
            lines.append(f"At the end training accuracy is above validation accuracy ({tail}).")
        elif self.sign == "about equal":
            lines.append(f"At the end training and validation accuracy are within "
                         f"{_points(GAP_TOLERANCE, signed=False)} point of each other ({tail}).")
        else:
            lines.append(f"At the end validation accuracy is above training accuracy ({tail}).")
            if self.regularizers is None:
                lines.append("The run's configuration is not available, so no cause is suggested.")
            elif self.possible_causes:
                lines.append("Possible causes, from the run's configuration (not measured here): "
                             + "; ".join(self.possible_causes) + ".")
            else:
                checked = [kind for kind in REGULARIZER_KINDS if kind not in self.unrecorded]
                text = (f"The run's configuration has no {_or(checked)}, so none of these explains it"
                        if checked else "The run's configuration records no regularizer, so no cause is suggested")
                if checked and self.unrecorded:
                    text += f" ({_or(self.unrecorded)} not recorded)"
                lines.append(text + ".")
        return lines


@dataclass(frozen=True)
class Overfitting:
    epochs: int
    onset_epoch: int | None  # the last epoch before validation loss starts rising
    rise_end_epoch: int | None
    rising_epochs: int | None
    val_loss_at_onset: float | None
    val_loss_at_end: float | None
    train_loss_at_onset: float | None
    train_loss_at_end: float | None

    def statements(self) -> list[str]:
        if self.epochs < OVERFIT_MIN_RISES + 1:
            return [f"Too few epochs ({self.epochs}) to look for an overfitting onset "
                    f"(needs at least {OVERFIT_MIN_RISES + 1})."]
        if self.onset_epoch is None:
            return [f"No overfitting onset detected: validation loss never rose for {OVERFIT_MIN_RISES} or more "
                    "consecutive epochs while training loss fell."]
        return [
            f"Overfitting onset after epoch {self.onset_epoch}: validation loss rose for {self.rising_epochs} "
            f"consecutive epochs ({self.val_loss_at_onset:.4f} at epoch {self.onset_epoch} to "
            f"{self.val_loss_at_end:.4f} at epoch {self.rise_end_epoch}) while training loss fell "
            f"({self.train_loss_at_onset:.4f} to {self.train_loss_at_end:.4f})."
        ]


@dataclass(frozen=True)
class Stability:
    """Std of epoch-to-epoch changes in validation accuracy (fractions)."""

    epochs: int
    whole_run: float | None
    split_epoch: int | None  # the first learning-rate step, first epoch at the new rate
    before: float | None
    after: float | None
    after_vs_before: str | None  # "lower", "higher", "similar"

    def statements(self) -> list[str]:
        measure = "Validation accuracy volatility (std of epoch-to-epoch changes)"
        if self.split_epoch is None:
            if self.whole_run is None:
                return [f"Too few epochs ({self.epochs}) to measure validation accuracy volatility."]
            return [f"{measure} over the whole run, which had no learning-rate step: "
                    f"{_volatility(self.whole_run)}."]
        before_range = _epochs(1, self.split_epoch - 1)
        after_range = _epochs(self.split_epoch, self.epochs)
        before = (f"{_volatility(self.before)} before the first learning-rate step ({before_range})"
                  if self.before is not None
                  else f"too few epochs before the first learning-rate step ({before_range}) to measure")
        after = (f"{_volatility(self.after)} after it ({after_range})"
                 if self.after is not None else f"too few epochs after it ({after_range}) to measure")
        text = f"{measure}: {before}; {after}"
        if self.after_vs_before == "similar":
            text += f"; similar on both sides (within a factor of {VOLATILITY_RATIO:g})"
        elif self.after_vs_before is not None:
            text += f"; {self.after_vs_before} after the step"
        return [text + "."]


@dataclass(frozen=True)
class Convergence:
    monitor: str
    monitor_from_config: bool  # False: DEFAULT_MONITOR, the configuration named none usable
    best_epoch: int
    best_value: float
    epochs: int
    last_value: float | None  # None: not finite
    planned_epochs: int | None
    early_stopping: bool | None  # None: not recorded
    restore_best_weights: bool | None
    patience: int | None
    # "best at last epoch", "stopped early", "time limit", "ended before planned" (early stopping off), "best earlier"
    outcome: str
    model_epoch: int | None  # whose weights the trained model holds; None: unknown
    # A resumed run: Keras's restore_best_weights only saw the last sitting (from this 1-based epoch; None: unknown).
    resumed: bool = False
    last_sitting_first_epoch: int | None = None

    def statements(self) -> list[str]:
        best = f"the best {self.monitor} {self.best_value:.4f}"
        since = self.epochs - self.best_epoch
        planned = f" of {self.planned_epochs} planned" if self.planned_epochs else ""
        if self.outcome == "time limit":
            text = f"The time limit (max_minutes) ended training at epoch {self.epochs}{planned}; {best} was at epoch "
            if since == 0:
                return [f"{text}{self.best_epoch}, the last: the run was still improving, so more time may help."]
            text += f"{self.best_epoch}, {_count(since)} before the end"
            return [text + (self._restored() if self.restore_best_weights else ".")]
        if self.outcome == "best at last epoch":
            return [f"{best[0].upper()}{best[1:]} was at the last epoch ({self.epochs}{planned}): the run was still "
                    "improving when it ended, so more epochs may help."]
        if self.outcome == "stopped early":
            patience = f", patience {self.patience}" if self.patience is not None else ""
            text = (f"Early stopping (monitor {self.monitor}{patience}) ended training at epoch "
                    f"{self.epochs}{planned}; {best} was at epoch {self.best_epoch}, {_count(since)} before the end")
            if self.restore_best_weights:
                return [text + self._restored()]
            return [f"{text}; restore_best_weights is off, so the model is from epoch {self.epochs} "
                    f"({self.monitor} {_fmt(self.last_value)})."]
        if self.outcome == "ended before planned":
            how = "disabled" if self.early_stopping is False else "not recorded"
            return [f"Training ended at epoch {self.epochs}{planned} without early stopping ({how}); "
                    f"{best} was at epoch {self.best_epoch}, {_count(since)} before the end."]
        ran = f"all {self.epochs} planned epochs" if self.planned_epochs else f"{self.epochs} epochs"
        text = (f"Training ran {ran}; {best} was at epoch {self.best_epoch}, with no improvement in the last "
                f"{_count(since)}.")
        if self.resumed and self.restore_best_weights:
            text = text[:-1] + self._restored()
        elif self.model_epoch == self.best_epoch:
            text += f" Early stopping's restore_best_weights keeps the epoch-{self.best_epoch} weights."
        elif self.model_epoch == self.epochs:
            text += f" The model is from epoch {self.epochs} ({self.monitor} {_fmt(self.last_value)})."
        return [text]


    def _restored(self) -> str:
        """How the statement ends when restore_best_weights is on: whose weights the model holds."""
        if not self.resumed:
            return ", and its weights were restored (restore_best_weights)."
        if self.model_epoch is None:
            return ("; the run was resumed, and restore_best_weights covers only its last sitting, so the model "
                    f"holds that sitting's best weights, not necessarily epoch {self.best_epoch}'s.")
        if self.model_epoch == self.best_epoch:
            return ", and its weights were restored (restore_best_weights, within the last sitting)."
        return (f"; the run was resumed, and restore_best_weights covers only its last sitting (epochs "
                f"{self.last_sitting_first_epoch}-{self.epochs}), so the model holds epoch {self.model_epoch}'s weights.")


@dataclass(frozen=True)
class ClassRecall:
    name: str
    recall: float
    correct: int
    support: int


@dataclass(frozen=True)
class Confusion:
    true: str
    predicted: str
    count: int
    support: int  # faces of the true class
    share: float  # count / support


@dataclass(frozen=True)
class Classes:
    split: str
    labels: tuple[str, ...]
    support: tuple[int, ...]
    correct: tuple[int, ...]
    recall: tuple[float | None, ...]  # None: no faces of the class in the split
    lowest_recall: tuple[ClassRecall, ...]
    confusions: tuple[Confusion, ...]
    unsupported: tuple[str, ...]

    def statements(self) -> list[str]:
        lines = []
        if self.lowest_recall:
            listed = ", ".join(f"{c.name} {c.recall:.1%} ({c.correct} of {c.support})" for c in self.lowest_recall)
            lines.append(f"Lowest recall on the {self.split} split: {listed}.")
        for rank, c in enumerate(self.confusions, start=1):
            lines.append(f"Confusion #{rank} on the {self.split} split: {c.true} -> {c.predicted}: "
                         f"{c.count} of {c.support} {c.true} faces ({c.share:.1%}).")
        if not self.lowest_recall and len(self.unsupported) < len(self.labels):
            lines.append(f"No misclassified faces on the {self.split} split.")
        if self.unsupported:
            lines.append(f"No faces of {', '.join(self.unsupported)} in the {self.split} split: "
                         "recall not measured.")
        return lines


@dataclass(frozen=True)
class Diagnostics:
    """What one run's histories, configuration and confusion matrix show. Epochs are 1-based."""

    epochs: int
    learning_rate: LearningRates
    gap: Gap
    overfitting: Overfitting
    stability: Stability
    convergence: Convergence
    classes: Classes | None  # None: the run has no confusion matrix

    def sections(self) -> list[tuple[str, list[str]]]:
        """(aspect, its statements), in the order of the report and of the compare rows."""
        classes = (self.classes.statements() if self.classes is not None
                   else ["No confusion matrix in the run: per-class diagnostics skipped."])
        return [
            ("Learning-rate steps", self.learning_rate.statements(self.epochs)),
            ("Train-validation gap", self.gap.statements()),
            ("Overfitting onset", self.overfitting.statements()),
            ("Stability", self.stability.statements()),
            ("Convergence", self.convergence.statements()),
            ("Weakest classes", classes),
        ]

    def statements(self) -> list[str]:
        return [line for _, lines in self.sections() for line in lines]

    def to_dict(self) -> dict:
        """JSON-ready: every field (None where a value is not measured), the statements and the rules."""
        data = _plain(dataclasses.asdict(self))
        return {"epoch_numbering": "1-based", **data, "statements": self.statements(), "rules": RULES}

    def to_markdown(self) -> str:
        lines = [
            "# Diagnostics",
            "",
            f"Computed from the run's own histories ({self.epochs} epochs, numbered from 1: epoch N is step N-1 in "
            "MLflow's charts), configuration and "
            "evaluation. Changes within the run's epoch-to-epoch noise are not claimed as effects.",
        ]
        for heading, statements in self.sections():
            lines += ["", f"## {heading}", ""] + [f"- {s}" for s in statements]
        lines += ["", "## Rules", ""] + [f"- {rule}" for rule in _rule_lines()]
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        """A few lines for the end of training."""
        sections = dict(self.sections())
        steps = self.learning_rate.steps
        lr_line = ("Learning-rate steps: " + "; ".join(step.short() for step in steps) if steps
                   else sections["Learning-rate steps"][0])
        lines = [
            f"Diagnostics ({self.epochs} epochs, numbered from 1: epoch N is step N-1 in MLflow's charts):",
            sections["Convergence"][0],
            sections["Overfitting onset"][0],
            sections["Train-validation gap"][1],
            sections["Stability"][0],
            lr_line,
            *sections["Weakest classes"][:2],
        ]
        return "\n".join(f"  {line}" if i else line for i, line in enumerate(lines)) + "\n"


# ------------------------------------------------------------------- computing


def diagnose(
    history: dict[str, list[float]],
    params: dict[str, str] | None = None,
    confusion: dict | None = None,
    stopped_by: str | None = None,
    sitting: tuple[bool, int | None] = (False, None),
) -> Diagnostics:
    """Diagnostics of a run from its per-epoch history, params (strings, as MLflow gives them) and confusion matrix.

    `history` needs accuracy, loss, val_accuracy and val_loss (one value per
    epoch, in order); learning_rate is optional. `confusion` is the run's
    confusion_matrix.json: {"split", "labels", "counts"}. `stopped_by` is the
    run's `fer.stopped_by` tag (epochs, early_stopping, time_limit) where it has
    one; without it, why training ended is inferred from the params. `sitting`
    is (whether the run was resumed, the 1-based first epoch of its last sitting
    or None when not recorded).
    """
    series = _validated(history)
    epochs = len(series["val_accuracy"])
    convergence = _convergence(series, params, stopped_by, sitting)
    return Diagnostics(
        epochs=epochs,
        learning_rate=_learning_rates(series, params),
        gap=_gap(series, params, convergence.best_epoch),
        overfitting=_overfitting(series),
        stability=_stability(series, params),
        convergence=convergence,
        classes=_classes(confusion) if confusion is not None else None,
    )


def _validated(history: dict) -> dict[str, np.ndarray]:
    missing = [key for key in REQUIRED_KEYS if not len(history.get(key) or [])]
    if missing:
        raise ValueError(f"history has no {', '.join(missing)} (keys: {sorted(history)}); diagnostics need "
                         f"{', '.join(REQUIRED_KEYS)} per epoch")
    series = {key: np.asarray(history[key], dtype=float).reshape(-1)
              for key in HISTORY_KEYS if len(history.get(key) or [])}
    lengths = {key: len(values) for key, values in series.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"history series differ in length: {lengths}")
    for key in ("val_accuracy", "val_loss"):
        if not np.isfinite(series[key]).any():
            raise ValueError(f"history[{key!r}] has no finite value")
    return series


def _continuous_schedule(params: dict | None) -> str | None:
    """"linear" or "cosine" when the run's rate decayed every step (fer.training.schedules); None for plateau steps."""
    schedule = (params or {}).get("config.lr_schedule")
    return schedule if schedule in ("linear", "cosine") else None


def _learning_rates(series: dict[str, np.ndarray], params: dict | None = None) -> LearningRates:
    rates = series.get("learning_rate")
    if rates is None:
        return LearningRates(logged=False, initial_rate=None, steps=())
    if schedule := _continuous_schedule(params):
        return LearningRates(logged=True, initial_rate=float(rates[0]), steps=(), schedule=schedule,
                             final_rate=float(rates[-1]))
    steps = learning_rate_steps({"learning_rate": rates})
    bounds = [0] + [index for index, _, _ in steps] + [len(rates)]
    effects = tuple(
        _step_effect(index, old, new, bounds[i], bounds[i + 2], series["val_accuracy"], series["val_loss"])
        for i, (index, old, new) in enumerate(steps)
    )
    return LearningRates(logged=True, initial_rate=float(rates[0]), steps=effects)


def _step_effect(step: int, old: float, new: float, previous: int, following: int,
                 val_accuracy: np.ndarray, val_loss: np.ndarray) -> StepEffect:
    """`step` is the 0-based first epoch at the new rate; `previous`/`following` bound its rate's neighbours."""
    before = slice(max(step - LR_WINDOW, previous), step)
    after = slice(step, min(step + LR_WINDOW, following))
    noise = slice(max(step - NOISE_WINDOW, previous), step)
    n_after, n_old = after.stop - after.start, step - previous
    acc_before, acc_after = _mean(val_accuracy[before]), _mean(val_accuracy[after])
    loss_before, loss_after = _mean(val_loss[before]), _mean(val_loss[after])
    acc_noise, loss_noise = _change_std(val_accuracy[noise]), _change_std(val_loss[noise])

    reason = None
    if n_after < LR_MIN_WINDOW:
        end = "the next step" if following < len(val_accuracy) else "the end of training"
        reason = f"{_count(n_after)} at the new rate before {end}; at least {LR_MIN_WINDOW} needed"
    elif n_old < NOISE_MIN_EPOCHS:
        reason = f"{_count(n_old)} at the old rate before it; at least {NOISE_MIN_EPOCHS} needed to measure noise"
    elif None in (acc_before, acc_after, loss_before, loss_after, acc_noise, loss_noise):
        reason = "validation values around it are not finite"

    acc_threshold = loss_threshold = acc_effect = loss_effect = None
    acc_change = _difference(acc_after, acc_before)
    loss_change = _difference(loss_after, loss_before)
    if reason is None:
        acc_threshold = max(NOISE_MULTIPLIER * acc_noise, MIN_ACCURACY_EFFECT)
        loss_threshold = max(NOISE_MULTIPLIER * loss_noise, MIN_LOSS_EFFECT * abs(loss_before))
        acc_effect = _effect(acc_change, acc_threshold, "rise", "drop")
        loss_effect = _effect(loss_change, loss_threshold, "rise", "fall")
    clear = acc_effect != "within noise" or loss_effect != "within noise"
    verdict = "too few epochs" if reason else ("clear" if clear else "no clear effect")
    return StepEffect(
        epoch=step + 1, old_rate=float(old), new_rate=float(new), verdict=verdict, reason=reason,
        before_first=before.start + 1 if before.stop > before.start else None,
        before_last=before.stop if before.stop > before.start else None,
        after_first=after.start + 1 if n_after else None,
        after_last=after.stop if n_after else None,
        val_accuracy_before=acc_before, val_accuracy_after=acc_after, val_accuracy_change=acc_change,
        val_loss_before=loss_before, val_loss_after=loss_after, val_loss_change=loss_change,
        noise_epochs=noise.stop - noise.start, val_accuracy_noise=acc_noise, val_loss_noise=loss_noise,
        val_accuracy_threshold=acc_threshold, val_loss_threshold=loss_threshold,
        val_accuracy_effect=acc_effect, val_loss_effect=loss_effect,
    )


def _effect(change: float, threshold: float, up: str, down: str) -> str:
    if abs(change) <= threshold:
        return "within noise"
    return up if change > 0 else down


def _gap(series: dict[str, np.ndarray], params: dict | None, best_epoch: int) -> Gap:
    gap = series["accuracy"] - series["val_accuracy"]
    finite = np.where(np.isfinite(gap), gap, 0.0)  # for argmax only; NaN epochs count as neither side
    widest = int(np.argmax(np.abs(finite)))
    tail = slice(max(len(gap) - GAP_TAIL, 0), len(gap))
    tail_mean = _mean(gap[tail])
    if tail_mean is None:
        sign = "unknown"
    elif tail_mean > GAP_TOLERANCE:
        sign = "train above validation"
    elif tail_mean < -GAP_TOLERANCE:
        sign = "validation above train"
    else:
        sign = "about equal"
    regularizers, unrecorded = _regularizers(params)
    return Gap(
        per_epoch=tuple(_number(v) for v in gap),
        train_above_epochs=int(np.sum(gap > 0)),
        validation_above_epochs=int(np.sum(gap < 0)),
        widest_epoch=widest + 1,
        widest=float(finite[widest]),
        best_epoch=best_epoch,
        at_best=_number(gap[best_epoch - 1]),
        tail_first=tail.start + 1,
        tail_last=tail.stop,
        tail_mean=tail_mean,
        sign=sign,
        regularizers=regularizers,
        unrecorded=unrecorded,
        possible_causes=regularizers if sign == "validation above train" and regularizers else (),
    )


def _regularizers(params: dict | None) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """(the training-only regularizers the configuration really has, described; the kinds it does not record).

    None for the first when there are no params at all.
    """
    if not params:
        return None, REGULARIZER_KINDS
    recorded = {
        "dropout": "model.dropout_rates" in params,
        "augmentation": any(k.startswith("config.augmentation.") for k in params),
        "label smoothing": "config.label_smoothing" in params,
    }
    unrecorded = tuple(kind for kind in REGULARIZER_KINDS if not recorded[kind])
    found = []
    rates = [r for r in (_float(v) for v in str(params.get("model.dropout_rates", "")).split(",")) if r]
    if rates:
        found.append(f"dropout (rates {', '.join(f'{r:g}' for r in rates)}), active in training only")
    # Every config.augmentation.* key, so a transform added later is picked up too.
    transforms = []
    for key in sorted(k for k in params if k.startswith("config.augmentation.")):
        name, value = key.rsplit(".", 1)[1], params[key]
        if _bool(value):
            transforms.append(name)
        elif _float(value):
            transforms.append(f"{name} {_float(value):g}")
    if transforms:
        found.append(f"augmentation of training batches only ({', '.join(transforms)})")
    smoothing = _float(params.get("config.label_smoothing"))
    if smoothing:
        found.append(f"label smoothing {smoothing:g} (softened training targets)")
    return tuple(found), unrecorded


def _overfitting(series: dict[str, np.ndarray]) -> Overfitting:
    val_loss, loss = series["val_loss"], series["loss"]
    epochs = len(val_loss)
    # overfit[j]: from epoch j to j+1 validation loss rose while training loss fell.
    overfit = [bool(val_loss[j + 1] > val_loss[j] and loss[j + 1] < loss[j]) for j in range(epochs - 1)]
    for start in range(epochs - OVERFIT_MIN_RISES):
        if all(overfit[start:start + OVERFIT_MIN_RISES]):
            end = start + OVERFIT_MIN_RISES
            while end < epochs - 1 and overfit[end]:
                end += 1
            return Overfitting(
                epochs=epochs, onset_epoch=start + 1, rise_end_epoch=end + 1, rising_epochs=end - start,
                val_loss_at_onset=float(val_loss[start]), val_loss_at_end=float(val_loss[end]),
                train_loss_at_onset=float(loss[start]), train_loss_at_end=float(loss[end]),
            )
    return Overfitting(epochs, None, None, None, None, None, None, None)


def _stability(series: dict[str, np.ndarray], params: dict | None = None) -> Stability:
    values = series["val_accuracy"]
    whole = _change_std(values, STABILITY_MIN_CHANGES)
    stepped = "learning_rate" in series and not _continuous_schedule(params)
    steps = learning_rate_steps({"learning_rate": series["learning_rate"]}) if stepped else []
    if not steps:
        return Stability(len(values), whole, None, None, None, None)
    split = steps[0][0]
    before = _change_std(values[:split], STABILITY_MIN_CHANGES)
    after = _change_std(values[split:], STABILITY_MIN_CHANGES)
    comparison = None
    if before is not None and after is not None:
        if after > before * VOLATILITY_RATIO:
            comparison = "higher"
        elif after * VOLATILITY_RATIO < before:
            comparison = "lower"
        else:
            comparison = "similar"
    return Stability(len(values), whole, split + 1, before, after, comparison)


def _convergence(
    series: dict[str, np.ndarray],
    params: dict | None,
    stopped_by: str | None = None,
    sitting: tuple[bool, int | None] = (False, None),
) -> Convergence:
    params = params or {}
    configured = params.get("config.early_stopping.monitor")
    monitor = configured if configured in MONITORS and configured in series else DEFAULT_MONITOR
    values = series[monitor]
    if not np.isfinite(values).any():
        raise ValueError(f"history[{monitor!r}] has no finite value")
    higher_is_better = monitor.endswith("accuracy")
    best = best_epoch(values, higher_is_better)  # a diverged epoch is never the best; first on ties
    epochs = len(values)
    planned = _int(params.get("config.epochs"))
    stopping = _bool(params.get("config.early_stopping.enabled"))
    restore = _bool(params.get("config.early_stopping.restore_best_weights"))
    # A recorded time limit first: it ends runs whether or not they still improve.
    # Then best at the last epoch: early stopping cannot have ended a run that was still improving.
    if stopped_by == "time_limit":
        outcome = "time limit"
    elif best == epochs - 1:
        outcome = "best at last epoch"
    elif planned is not None and epochs < planned:
        outcome = "stopped early" if stopping else "ended before planned"
    else:
        outcome = "best earlier"
    # Keras 3 EarlyStopping restores the best weights at the end of training, stopped early or not.
    if stopping is None or (stopping and restore is None):
        model_epoch = None
    elif stopping and restore:
        resumed, first = sitting
        if not resumed:
            model_epoch = best + 1
        elif first is None or not 1 <= first <= epochs:
            model_epoch = None
        else:  # EarlyStopping's best weights live in memory: a resumed sitting only knows its own epochs
            last = values[first - 1:]
            model_epoch = first + best_epoch(last, higher_is_better)
    else:
        model_epoch = epochs
    return Convergence(
        monitor=monitor, monitor_from_config=monitor == configured,
        best_epoch=best + 1, best_value=float(values[best]), epochs=epochs, last_value=_number(values[-1]),
        planned_epochs=planned, early_stopping=stopping, restore_best_weights=restore,
        patience=_int(params.get("config.early_stopping.patience")), outcome=outcome, model_epoch=model_epoch,
        resumed=sitting[0], last_sitting_first_epoch=sitting[1],
    )


def _classes(confusion: dict) -> Classes:
    labels = tuple(str(name) for name in confusion["labels"])
    counts = np.asarray(confusion["counts"], dtype=np.int64)
    if counts.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion counts have shape {counts.shape}; {len(labels)} labels need "
                         f"({len(labels)}, {len(labels)})")
    support, correct = counts.sum(axis=1), np.diag(counts)
    present = [i for i in range(len(labels)) if support[i] > 0]
    recall = [float(correct[i] / support[i]) if support[i] else None for i in range(len(labels))]
    # A class with every face right is not weak, whatever its rank.
    lowest = sorted((i for i in present if correct[i] < support[i]), key=lambda i: (recall[i], i))[:LOWEST_RECALL_COUNT]
    cells = [(i, j) for i in present for j in range(len(labels)) if i != j and counts[i, j] > 0]
    cells.sort(key=lambda c: (-counts[c], -counts[c] / support[c[0]], c))
    return Classes(
        split=str(confusion.get("split", "evaluation")),
        labels=labels,
        support=tuple(int(s) for s in support),
        correct=tuple(int(c) for c in correct),
        recall=tuple(recall),
        lowest_recall=tuple(ClassRecall(labels[i], recall[i], int(correct[i]), int(support[i])) for i in lowest),
        confusions=tuple(
            Confusion(labels[i], labels[j], int(counts[i, j]), int(support[i]), float(counts[i, j] / support[i]))
            for i, j in cells[:TOP_CONFUSIONS]
        ),
        unsupported=tuple(labels[i] for i in range(len(labels)) if support[i] == 0),
    )


# ------------------------------------------------------------------- MLflow


def diagnose_run(run_id: str, client: MlflowClient | None = None) -> Diagnostics:
    """Diagnostics of a logged training run: its metric histories, params and confusion_matrix.json."""
    client = client or MlflowClient()
    return diagnose_logged_run(client.get_run(run_id), read_history(client, run_id), client)


def diagnose_logged_run(run: Run, history: dict[str, list[float]], client: MlflowClient) -> Diagnostics:
    """Diagnostics of a run already fetched, with its histories already read (`fer.analysis.history.read_history`).

    For callers that read the run for other purposes too (`fer.analysis.compare`), so nothing is fetched twice.
    """
    run_id = run.info.run_id
    tags = run.data.tags
    sittings = int(tags.get("fer.sittings", "1"))
    first = tags.get(f"fer.sitting_{sittings}.first_epoch")
    sitting = (sittings > 1, int(first) if first else None)
    return diagnose(history, dict(run.data.params), _load_confusion(client, run_id), tags.get(TAG_STOPPED_BY), sitting)


def _load_confusion(client: MlflowClient, run_id: str) -> dict | None:
    # Through the client rather than mlflow.artifacts.load_dict("runs:/..."):
    # the latter reads the global tracking URI, which may not be the client's.
    if CONFUSION_ARTIFACT not in {f.path for f in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, CONFUSION_ARTIFACT, tmp)).read_text())


def log_diagnostics(diagnostics: Diagnostics, run_id: str | None = None) -> None:
    """diagnostics.md and diagnostics.json as artifacts of `run_id`, or of the active run when None."""
    markdown, data = diagnostics.to_markdown(), diagnostics.to_dict()
    if run_id is None:
        if mlflow.active_run() is None:
            # mlflow.log_text would silently start a new, empty run instead.
            raise RuntimeError("log_diagnostics: no active MLflow run; pass run_id")
        mlflow.log_text(markdown, MARKDOWN_ARTIFACT)
        mlflow.log_dict(data, JSON_ARTIFACT)
        return
    client = MlflowClient()
    client.log_text(run_id, markdown, MARKDOWN_ARTIFACT)
    client.log_dict(run_id, data, JSON_ARTIFACT)


def compare_rows(baseline: Diagnostics, final: Diagnostics) -> list[tuple[str, str, str]]:
    """(aspect, baseline statements, final statements) rows, one per aspect, in report order."""
    return [
        (aspect, " ".join(base_lines), " ".join(final_lines))
        for (aspect, base_lines), (_, final_lines) in zip(baseline.sections(), final.sections())
    ]


# ------------------------------------------------------------------- helpers


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.mean(finite)) if len(finite) else None


def _change_std(values: np.ndarray, min_changes: int = NOISE_MIN_EPOCHS - 1) -> float | None:
    """`fer.analysis.history.change_std` with the noise rule's minimum number of changes by default."""
    return change_std(values, min_changes)


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _int(value) -> int | None:
    number = _float(value)
    return int(number) if number is not None and number.is_integer() else None


def _bool(value) -> bool | None:
    """MLflow params are strings: "True"/"False" (and "true", "1", ... from the command line)."""
    text = str(value).strip().lower()
    if text in ("true", "yes"):
        return True
    if text in ("false", "no"):
        return False
    return None


def _points(fraction: float, signed: bool = True) -> str:
    return f"{fraction * 100:+.1f}" if signed else f"{fraction * 100:.1f}"


def _points_or_na(fraction: float | None) -> str:
    return "n/a" if fraction is None else _points(fraction)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _volatility(std: float) -> str:
    word = band(std, STABILITY_BANDS)
    return f"{_points(std, signed=False)} points ({word})"


def _or(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _count(epochs: int) -> str:
    return f"{epochs} epoch{'s' if epochs != 1 else ''}"


def _epochs(first: int, last: int) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def _rule_lines() -> list[str]:
    return [
        f"Learning-rate step: mean over up to {LR_WINDOW} epochs after vs before (stopping at neighbouring steps); "
        f"clear only beyond {NOISE_MULTIPLIER:g}x the std of epoch-to-epoch changes over up to {NOISE_WINDOW} epochs "
        f"at the old rate, and at least {_points(MIN_ACCURACY_EFFECT, signed=False)} point of accuracy or "
        f"{MIN_LOSS_EFFECT:.0%} of the loss; needs {LR_MIN_WINDOW} epochs after and {NOISE_MIN_EPOCHS} before.",
        f"Gap sign: mean train-minus-validation accuracy over the last {GAP_TAIL} epochs, "
        f"about equal within {_points(GAP_TOLERANCE, signed=False)} point.",
        f"Overfitting onset: validation loss up and training loss down for {OVERFIT_MIN_RISES}+ consecutive epochs.",
        "Stability bands (std of epoch-to-epoch validation accuracy changes): "
        + ", ".join(f"{label} below {limit * 100:g} points" if np.isfinite(limit) else f"{label} above"
                    for limit, label in STABILITY_BANDS)
        + f"; lower/higher after a step beyond a factor of {VOLATILITY_RATIO:g}.",
        f"Best epoch: by early stopping's monitor (default {DEFAULT_MONITOR}), first on ties.",
    ]


def _plain(value):
    """Tuples to lists, recursively, so to_dict() equals its own JSON round trip."""
    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
