"""Figures and texts for a finished training run: history curves, best epochs, evaluation.

These used to be made by hand from a pickled Keras ``History`` and a home-made
``plot_history``. Here they are plain functions of plain data so that training
code can log their output as MLflow artifacts and tests can check them without
a model:

* a *history* is ``History.history``: ``{metric_name: [value per epoch, ...]}``
  (keys such as ``accuracy``, ``loss``, ``val_accuracy``, ``val_loss``,
  ``learning_rate``). List indices are 0-based epochs; every text and figure
  shows epochs 1-based, as people count them.
* an *evaluation* (`fer.evaluation.metrics.Evaluation`) is drawn as a
  confusion matrix and a reliability diagram; the numbers are computed there.

Deliberately no tensorflow/keras or mlflow import: this module must stay cheap
to import (CLI start-up, tests) and usable on a machine that only has the
artifacts. Figures are drawn on ``matplotlib.figure.Figure`` objects, never
through pyplot, so nothing touches a GUI backend or pyplot's global figure
list (no leaked figures in long training loops); saving a bare ``Figure``
renders with Agg.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator
from fer.analysis.history import best_epoch, format_rate, marked_rate_steps
from fer.analysis.history import learning_rates as _learning_rates
from fer.analysis.history import series as _series
from fer.evaluation.calibration import Reliability
from fer.utils.atomic import atomic_output

__all__ = [
    "BestPerformance",
    "best_performance",
    "plot_confusion_matrix",
    "plot_history",
    "plot_reliability_diagram",
]

# Above this many epochs per-epoch markers turn the curves into a smear.
_MARKER_MAX_EPOCHS = 40

_TRAIN_COLOR = "tab:blue"
_VAL_COLOR = "tab:orange"
_LR_COLOR = "tab:green"
_STEP_COLOR = "0.45"


# --------------------------------------------------------------------------- history


def _epochs(values: np.ndarray) -> np.ndarray:
    """1-based epoch numbers for a per-epoch series."""
    return np.arange(1, len(values) + 1)


def _plot_pair(ax, history: dict, metric: str, n_epochs: int) -> bool:
    """Train and validation curves of `metric` on `ax`; False when neither was logged."""
    marker = "o" if n_epochs <= _MARKER_MAX_EPOCHS else None
    drawn = False
    for key, label, color in (
        (metric, "train", _TRAIN_COLOR),
        (f"val_{metric}", "validation", _VAL_COLOR),
    ):
        values = _series(history, key)
        if values is None:
            continue
        ax.plot(_epochs(values), values, color=color, marker=marker, markersize=3.5, label=label)
        drawn = True
    return drawn


def _mark_best_val_accuracy(ax, history: dict) -> None:
    values = _series(history, "val_accuracy")
    if values is None or np.all(np.isnan(values)):
        return
    best = best_epoch(values)
    # Star plus a legend entry instead of a text box: the legend finds free
    # space by itself, a text box would sit on the curves whatever their shape.
    ax.plot(
        best + 1,
        values[best],
        linestyle="none",
        marker="*",
        markersize=14,
        color="tab:red",
        markeredgecolor="white",
        zorder=5,
        clip_on=False,  # the best epoch is often the last one, on the frame
        label=f"best val {values[best]:.4f} (epoch {best + 1})",
    )


def _mark_lr_steps(ax, steps, annotate: bool) -> None:
    """Dashed line between the last epoch at the old rate and the first at the new one."""
    for i, (epoch, _old, new) in enumerate(steps):
        # 0-based index `epoch` is 1-based epoch `epoch + 1`; the boundary with
        # the previous epoch lies half-way, at `epoch + 0.5`.
        x = epoch + 0.5
        ax.axvline(
            x,
            color=_STEP_COLOR,
            linestyle="--",
            linewidth=1,
            zorder=1,
            label=_steps_label(steps) if i == 0 and not annotate else None,
        )
        if annotate:
            ax.annotate(
                f"lr \u2192 {format_rate(new)}",
                xy=(x, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(-3, -4),
                textcoords="offset points",
                rotation=90,
                ha="right",
                va="top",
                fontsize=8.5,
                color="0.25",
            )


def _steps_label(steps) -> str:
    """Legend text for the step lines on the accuracy/loss panels: the new rates, if few."""
    if len(steps) > 2:
        # More would make the legend bigger than the plot; the lr panel has them all.
        return f"{len(steps)} lr steps (see learning rate)"
    return ", ".join(
        f"lr \u2192 {format_rate(new)} from epoch {epoch + 1}" for epoch, _, new in steps
    )


def _lr_limits(rates: np.ndarray) -> tuple[float, float]:
    """Log-axis limits leaving the top ~30% free for the rotated step annotations.

    Without the headroom the "lr -> 5e-4" labels, hung from the top of the
    panel, cross the curve where it is still at the initial (highest) rate.
    Also gives a constant rate a non-degenerate range.
    """
    bottom = np.log10(np.nanmin(rates)) - 0.3
    data_top = np.log10(np.nanmax(rates)) + 0.15
    headroom = 0.3
    top = data_top + headroom / (1 - headroom) * (data_top - bottom)
    return 10**bottom, 10**top


def _plot_learning_rate(ax, rates: np.ndarray, n_epochs: int) -> None:
    marker = "o" if n_epochs <= _MARKER_MAX_EPOCHS else None
    # steps-mid: the line changes level at the epoch boundary (x.5), exactly
    # where the dashed step lines are drawn.
    ax.plot(
        _epochs(rates),
        rates,
        color=_LR_COLOR,
        marker=marker,
        markersize=3.5,
        drawstyle="steps-mid",
    )
    # A log axis cannot show 0 or negative rates (e.g. a schedule ending at 0).
    if np.all(rates[np.isfinite(rates)] > 0):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10))
        ax.set_ylim(*_lr_limits(rates))
    ax.set_title("learning rate")
    ax.set_ylabel("learning rate (log scale)")


def style_epoch_axis(ax, n_epochs: int) -> None:
    """Label `ax`'s x axis in whole epochs 1..n_epochs, with half an epoch of margin and a light grid."""
    ax.set_xlabel("epoch")
    if n_epochs <= 15:
        # Every epoch labelled; MaxNLocator would put ticks at 0.6, 1.2 for one epoch.
        ax.set_xticks(range(1, n_epochs + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
    # Half an epoch of margin so the first/last points and the step lines at
    # x.5 are not glued to the frame; also gives 1-epoch runs a real x range.
    ax.set_xlim(0.5, n_epochs + 0.5)
    ax.grid(True, alpha=0.3)


def plot_history(history: dict, path, title: str | None = None) -> Path:
    """Write a PNG of the training curves to `path` and return it as a Path.

    Panels side by side: accuracy and loss (train vs validation) and, when the
    history has a learning rate, the rate on a log axis. Learning-rate steps
    are dashed vertical lines on every panel, annotated with the new rate on
    the learning-rate panel; the best validation accuracy is starred. Series
    that were not logged (no validation, no rate) are left out.
    """
    path = Path(path)
    series = [v for v in history.values() if v is not None and len(v) > 0]
    if not series:
        raise ValueError(f"history has no values to plot (keys: {sorted(history)})")
    n_epochs = max(len(v) for v in series)
    rates = _learning_rates(history)
    steps = marked_rate_steps(history)

    metrics = [
        m
        for m in ("accuracy", "loss")
        if _series(history, m) is not None or _series(history, f"val_{m}") is not None
    ]
    n_panels = len(metrics) + (rates is not None)
    if n_panels == 0:
        raise ValueError(
            "history has none of accuracy, val_accuracy, loss, val_loss, learning_rate "
            f"(keys: {sorted(history)})"
        )

    fig = Figure(figsize=(5.2 * n_panels, 4.6), dpi=110, layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        _plot_pair(ax, history, metric, n_epochs)
        if metric == "accuracy":
            _mark_best_val_accuracy(ax, history)
        _mark_lr_steps(ax, steps, annotate=False)
        ax.set_title(metric)
        ax.set_ylabel(metric)
        # Below the panel, not inside: inside, "best" still lands on data for
        # short runs or curves that fill the panel.
        ax.legend(
            loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, fontsize=9, frameon=False
        )
        style_epoch_axis(ax, n_epochs)
    if rates is not None:
        ax = axes[-1]
        _plot_learning_rate(ax, rates, n_epochs)
        _mark_lr_steps(ax, steps, annotate=True)
        style_epoch_axis(ax, n_epochs)
    if title:
        fig.suptitle(title, fontsize=13)

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "the figure") as partial:  # a whole PNG or none
        fig.savefig(partial, format="png")
    return path


# --------------------------------------------------------------------- best epochs


@dataclass(frozen=True)
class BestPerformance:
    """Best values of a training run. Epochs here are 1-based."""

    best_train_accuracy: float
    best_train_accuracy_epoch: int
    best_val_accuracy: float
    best_val_accuracy_epoch: int
    lowest_train_loss: float
    lowest_train_loss_epoch: int
    lowest_val_loss: float
    lowest_val_loss_epoch: int
    epochs: int

    def to_text(self) -> str:
        """The human-readable report, one aligned line per value."""
        rows = [
            ("Best train accuracy", self.best_train_accuracy, self.best_train_accuracy_epoch),
            ("Best validation accuracy", self.best_val_accuracy, self.best_val_accuracy_epoch),
            ("Lowest train loss", self.lowest_train_loss, self.lowest_train_loss_epoch),
            ("Lowest validation loss", self.lowest_val_loss, self.lowest_val_loss_epoch),
        ]
        label_width = max(len(label) for label, _, _ in rows) + 1  # + the colon
        value_width = max(len(f"{value:.4f}") for _, value, _ in rows)
        lines = [f"Best performance over {self.epochs} epochs"]
        for label, value, epoch in rows:
            lines.append(
                f"{label + ':':<{label_width}} {value:>{value_width}.4f} "
                f"(epoch {epoch} of {self.epochs}, step {epoch - 1} in MLflow's charts)"
            )
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        """Plain Python numbers (JSON / mlflow.log_dict friendly)."""
        return dataclasses.asdict(self)


# (BestPerformance field, history key, higher is better), in the order errors are raised.
_BEST_OF = (
    ("best_train_accuracy", "accuracy", True),
    ("best_val_accuracy", "val_accuracy", True),
    ("lowest_train_loss", "loss", False),
    ("lowest_val_loss", "val_loss", False),
)


def _best(history: dict, key: str, higher_is_better: bool) -> tuple[float, int]:
    """(value, 1-based epoch) of the best entry of history[key], first on ties."""
    values = _series(history, key)
    if values is None:
        raise ValueError(
            f"history has no values for {key!r} (keys: {sorted(history)}); "
            "best_performance needs accuracy, loss, val_accuracy and val_loss"
        )
    if np.all(np.isnan(values)):
        raise ValueError(f"history[{key!r}] is all NaN")
    index = best_epoch(values, higher_is_better)  # a diverged epoch (loss = nan) is never the "best"
    return float(values[index]), index + 1


def best_performance(history: dict) -> BestPerformance:
    """Best/lowest accuracy and loss, train and validation, with their 1-based epochs.

    Raises ValueError naming the key when accuracy, loss, val_accuracy or
    val_loss is missing or empty.
    """
    fields = {}
    for field, key, higher_is_better in _BEST_OF:
        fields[field], fields[f"{field}_epoch"] = _best(history, key, higher_is_better)
    epochs = max(len(history[key]) for _, key, _ in _BEST_OF)
    return BestPerformance(**fields, epochs=epochs)


# ---------------------------------------------------------------------- evaluation


def _check_confusion(cm: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square KxK; got shape {cm.shape}")
    if cm.shape[0] != len(class_names):
        raise ValueError(
            f"confusion matrix is {cm.shape[0]}x{cm.shape[0]} but there are "
            f"{len(class_names)} class names"
        )
    return cm


def plot_confusion_matrix(cm: np.ndarray, class_names, path, title=None) -> Path:
    """Write a PNG heatmap of the row-normalized confusion matrix and return its Path.

    Rows are true classes, columns predicted ones. Each cell shows the share of
    its row in percent and the raw count; a row with no samples is drawn grey
    with "no samples" rather than NaN. The y labels carry each row's support.
    """
    path = Path(path)
    cm = _check_confusion(cm, class_names)
    k = cm.shape[0]
    support = cm.sum(axis=1)
    # Row-normalize: raw counts would make the colours follow class frequency
    # (FER+ has ~30x more "neutral" than "contempt") instead of recall.
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = cm / support[:, None]
    shares = np.ma.masked_invalid(np.where(support[:, None] > 0, shares, np.nan))

    side = max(5.0, 0.85 * k + 2.4)
    fig = Figure(figsize=(side + 1.2, side), dpi=110, layout="constrained")
    ax = fig.subplots()
    cmap = _blues_with_grey()
    image = ax.imshow(shares, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    colorbar.set_label("share of true class")
    colorbar.ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")

    cell_font = 9 if k <= 8 else 7
    for row in range(k):
        if support[row] == 0:
            ax.text(
                (k - 1) / 2, row, "no samples",
                ha="center", va="center", fontsize=cell_font, color="0.3", style="italic",
            )
            continue
        for col in range(k):
            share = shares[row, col]
            # White text on dark cells, black on light ones, so both stay legible.
            color = "white" if share > 0.55 else "black"
            weight = "bold" if row == col else "normal"
            ax.text(
                col, row, f"{share:.0%}\n({cm[row, col]})",
                ha="center", va="center", fontsize=cell_font,
                color=color, fontweight=weight, linespacing=1.1,
            )

    ax.set_xticks(
        range(k), labels=list(class_names), rotation=40, ha="right", rotation_mode="anchor"
    )
    ax.set_yticks(range(k), labels=[f"{name} (n={n})" for name, n in zip(class_names, support)])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    # Thin white grid between cells makes rows easy to follow across.
    ax.set_xticks(np.arange(-0.5, k, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, k, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_title(title or "Confusion matrix (row-normalized)")

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "the figure") as partial:  # a whole PNG or none
        fig.savefig(partial, format="png")
    return path


def _blues_with_grey():
    # Masked cells (rows with zero support) are drawn light grey, not white "0%".
    return colormaps["Blues"].with_extremes(bad="0.85")


# --------------------------------------------------------------- reliability diagram


def plot_reliability_diagram(curves: Mapping[str, Reliability], path, title: str | None = None) -> Path:
    """Write a PNG reliability diagram of one or more sets of predictions to `path`; return it as a Path.

    `curves` maps a legend name to `fer.evaluation.calibration.reliability(...)` bins
    (the same bins for all), e.g. the predictions before and after temperature
    scaling. Top panel: each curve's accuracy against its mean confidence in
    every non-empty bin, with the diagonal of perfect calibration (below it:
    over-confident) and the curve's ECE in the legend. Bottom panel: the share
    of faces in each bin, the curves' bars side by side.

    Example:
        bins = fer.evaluation.calibration.reliability(labels, probabilities)
        plot_reliability_diagram({"test split": bins}, "reliability_diagram.png")
    """
    path = Path(path)
    if not curves:
        raise ValueError("plot_reliability_diagram needs at least one set of bins")
    edges = next(iter(curves.values())).edges
    for name, bins in curves.items():
        if bins.edges.shape != edges.shape or not np.allclose(bins.edges, edges):
            raise ValueError(f"the bins of {name!r} differ from those of the first curve; bin all curves alike")

    fig = Figure(figsize=(6.4, 7.2), dpi=110, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], linestyle="--", color=_STEP_COLOR, linewidth=1, label="perfect calibration")
    width = np.diff(edges)
    colors = colormaps["tab10"].colors
    for i, (name, bins) in enumerate(curves.items()):
        filled = bins.counts > 0
        label = f"{name} (ECE {bins.ece:.4f})"
        top.plot(bins.confidence[filled], bins.accuracy[filled], marker="o", markersize=4,
                 color=colors[i % len(colors)], label=label)
        share = bins.counts / max(bins.total, 1)
        bar_width = width / len(curves)
        bottom.bar(edges[:-1] + i * bar_width, share, width=bar_width, align="edge",
                   color=colors[i % len(colors)], alpha=0.8, label=name)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy in the bin")
    top.set_title(title or f"Reliability ({len(width)} confidence bins)")
    top.grid(True, alpha=0.3)
    top.legend(loc="upper left", fontsize=9)
    bottom.set_xlabel("confidence (highest probability)")
    bottom.set_ylabel("share of faces")
    bottom.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    bottom.grid(True, axis="y", alpha=0.3)

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "the figure") as partial:  # a whole PNG or none
        fig.savefig(partial, format="png")
    return path
