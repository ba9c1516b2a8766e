"""What a model's probabilities score on a split: accuracy, macro-F1, per-class metrics, calibration.

`evaluate_predictions` is the one place the project scores predictions:
training's evaluation and its fitted steps (`fer.training.train`), `fer export`'s
accuracy deltas and the inference benchmark all call it. The plots of an
`Evaluation` are `fer.analysis.reports`'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from fer.evaluation.calibration import Reliability, class_indices, reliability
from fer.evaluation.calibration import log_loss as _log_loss


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields make field-wise == ambiguous
class Evaluation:
    """Metrics of one model on one split, all from sklearn."""

    split: str  # "test" or "val"
    accuracy: float
    macro_f1: float  # over the classes present in y_true
    per_class: dict  # {class_name: {"precision", "recall", "f1", "support"}}
    confusion: np.ndarray  # raw counts, KxK, rows = true, columns = predicted
    report_text: str  # sklearn classification_report with class names
    log_loss: float  # mean -ln p[true class] (fer.evaluation.calibration.log_loss)
    reliability: Reliability  # the confidence bins (15) that the reliability diagram draws

    @property
    def ece(self) -> float:
        """Expected calibration error over the reliability bins (`fer.evaluation.calibration`)."""
        return self.reliability.ece

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat dict for ``mlflow.log_metrics``.

        ``{prefix}_accuracy``, ``{prefix}_macro_f1``, ``{prefix}_log_loss``,
        ``{prefix}_ece`` and ``{prefix}_{precision|recall|f1}_{class_name}``
        for every class that has samples. Zero-support classes are left out:
        their 0.0 would be an artefact of zero_division, not a measurement,
        and would drag charts.
        """
        out = {
            f"{prefix}_accuracy": self.accuracy,
            f"{prefix}_macro_f1": self.macro_f1,
            f"{prefix}_log_loss": self.log_loss,
            f"{prefix}_ece": self.ece,
        }
        for name, values in self.per_class.items():
            if values["support"] == 0:
                continue
            for metric in ("precision", "recall", "f1"):
                out[f"{prefix}_{metric}_{name}"] = values[metric]
        return out


def _labels(y_true, k: int) -> np.ndarray:
    """Integer labels; one-hot or soft (vote distribution) targets become their argmax."""
    y = np.asarray(y_true)
    if y.ndim == 2:
        if y.shape[1] != k:
            raise ValueError(f"y_true has {y.shape[1]} columns but there are {k} classes")
        y = y.argmax(axis=1)
    if y.ndim != 1:
        raise ValueError(f"y_true must be labels (N,) or targets (N, K); got shape {y.shape}")
    return class_indices(y, k, "y_true")


def evaluate_predictions(y_true, probabilities, class_names, split: str) -> Evaluation:
    """Evaluate predicted probabilities (N, K), rows summing to 1, against integer labels (N,).

    The prediction is the argmax of each row. All classification metrics come
    from sklearn; macro-F1 averages over the classes present in y_true, so a
    class the split has no sample of cannot pull it down with a meaningless 0.
    Log-loss and the reliability bins (ECE, 15 bins) score the probabilities
    themselves against the labels (`fer.evaluation.calibration`); soft targets count as
    their argmax there too, as for accuracy.
    """
    class_names = [str(name) for name in class_names]
    k = len(class_names)
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape[1] != k:
        raise ValueError(f"probabilities must have shape (N, {k}); got {probabilities.shape}")
    y_true = _labels(y_true, k)
    if len(y_true) != len(probabilities):
        raise ValueError(f"{len(y_true)} labels but {len(probabilities)} rows of probabilities")
    if len(y_true) == 0:
        raise ValueError("cannot evaluate an empty split")
    y_pred = probabilities.argmax(axis=1)

    all_labels = list(range(k))
    present = sorted(set(y_true.tolist()))
    macro_f1 = float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=all_labels, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    report_text = classification_report(
        y_true, y_pred, labels=all_labels, target_names=class_names, zero_division=0, digits=4
    )
    if len(present) < k:
        # sklearn's "macro avg" row averages all K classes, zeros included; say
        # which number is logged as macro_f1 so the two are not confused.
        missing = ", ".join(class_names[i] for i in all_labels if i not in present)
        report_text += (
            f"\nNo samples of: {missing}. macro_f1 (logged) averages the {len(present)} "
            f"classes present: {macro_f1:.4f}\n"
        )
    bins = reliability(y_true, probabilities)
    loss = _log_loss(y_true, probabilities)
    report_text += (
        f"\nCalibration: log-loss {loss:.4f}, expected calibration error {bins.ece:.4f} "
        f"({len(bins.counts)} equal-width confidence bins)\n"
    )
    confusion = confusion_matrix(y_true, y_pred, labels=all_labels)
    confusion.setflags(write=False)  # the dataclass is frozen; keep its array so too
    return Evaluation(
        split=split,
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=macro_f1,
        per_class=per_class,
        confusion=confusion,
        report_text=report_text,
        log_loss=loss,
        reliability=bins,
    )
