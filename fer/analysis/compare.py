"""Baseline against final: the table people used to paste into a report by hand.

Every number is read from the two runs' own metric histories in MLflow, so
the table can be regenerated at any time and checked against the runs.
The comparison itself is an MLflow run (tag `fer.phase=compare`) that holds
the table as Markdown, CSV and a self-contained HTML page, plus both runs'
validation curves overlaid.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import os
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Run

from fer.data.splits import EMOTIONS
from fer.analysis.diagnostics import STABILITY_MIN_CHANGES, compare_rows, diagnose_logged_run
from fer.analysis.history import (
    OVERFIT_BANDS,
    STABILITY_BANDS,
    band,
    best_epoch,
    change_std,
    gap_at,
    marked_rate_steps,
    read_history,
)
from fer.analysis.reports import style_epoch_axis
from fer.utils.atomic import atomic_output
from fer.tracking import (
    RUN_KIND_COMPARE,
    TAG_EVAL_SPLIT,
    TAG_PHASE,
    TAG_RUN_KIND,
    TAG_STOPPED_BY,
    client_for_command,
    first_finished_run,
)

PHASE_COMMANDS = {
    "phase1": "mlflow run . -e phase1 --env-manager local --experiment-name {experiment}",
    "phase2": "mlflow run . -e phase2 --env-manager local --experiment-name {experiment}",
}


class CompareError(LookupError):
    """A run to compare is missing; the message says which command makes one."""


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What the table needs from one training run."""

    run_id: str
    run_name: str
    phase: str
    history: dict[str, list[float]]
    eval_split: str | None
    eval_accuracy: float | None
    eval_macro_f1: float | None
    # Per-class recall on the evaluation split ({class: recall}, classes with samples only).
    eval_recall: dict[str, float] = dataclasses.field(default_factory=dict)
    train_seconds: float | None = None  # model.fit's wall time (of the last sitting of a resumed run)
    stopped_by: str | None = None  # epochs | early_stopping | time_limit
    wall_seconds: float | None = None  # the run's start to end: every sitting, the pauses between them, evaluation
    sittings: int = 1
    # Calibration of the served probabilities on the evaluation split (fer.evaluation.calibration); None in runs from before it.
    eval_log_loss: float | None = None
    eval_ece: float | None = None
    temperature: float | None = None  # with `calibration: temperature`, the one fitted on validation

    @property
    def best_epoch(self) -> int:
        """0-based index of the best validation accuracy (first on ties; a NaN epoch is never the best)."""
        return best_epoch(self.history["val_accuracy"])

    @property
    def best_val_accuracy(self) -> float:
        return float(self.history["val_accuracy"][self.best_epoch])

    @property
    def best_val_loss(self) -> float:
        return float(self.history["val_loss"][best_epoch(self.history["val_loss"], higher_is_better=False)])

    @property
    def epochs(self) -> int:
        return len(self.history["val_accuracy"])

    @property
    def volatility(self) -> float:
        """Std of the finite epoch-to-epoch changes in validation accuracy; NaN with too few to measure.

        Too few is under STABILITY_MIN_CHANGES changes, as in the diagnostics: the
        std of one change is 0, which would read as "stable" when nothing was measured.
        """
        std = change_std(self.history["val_accuracy"], STABILITY_MIN_CHANGES)
        return float("nan") if std is None else std

    @property
    def overfit_gap(self) -> float:
        """Train minus validation accuracy at the best validation epoch (NaN when training's is NaN there)."""
        return gap_at(self.history, self.best_epoch)


@dataclasses.dataclass(frozen=True)
class Row:
    metric: str
    baseline: str
    final: str
    improvement: str


# ------------------------------------------------------------------ finding runs


def resolve_runs(
    client: MlflowClient, experiment: str, baseline_run_id: str | None, final_run_id: str | None
) -> tuple[Run, Run]:
    """The runs given by id, else the latest finished phase-1 / phase-2 runs in `experiment` (not sweep trials)."""
    found = {}
    for phase, run_id in (("phase1", baseline_run_id), ("phase2", final_run_id)):
        if run_id:
            found[phase] = client.get_run(run_id)
            continue
        run = first_finished_run(client, experiment, phase)
        if run is None:
            command = PHASE_COMMANDS[phase].format(experiment=experiment)
            raise CompareError(
                f"No finished {phase} run in experiment {experiment!r} at {mlflow.get_tracking_uri()} "
                f"(sweep trials are left out: name one with --{'baseline' if phase == 'phase1' else 'final'}-run). "
                f"Train one first: {command}"
            )
        found[phase] = run
    return found["phase1"], found["phase2"]


def summarize(run: Run, history: dict[str, list[float]]) -> RunSummary:
    """What the table needs from `run`, with its histories as `fer.analysis.history.read_history` gives them."""
    for key in ("accuracy", "val_accuracy", "val_loss"):
        if key not in history:
            raise CompareError(f"Run {run.info.run_id} has no {key} history; is it a fer training run?")
    metrics = run.data.metrics
    return RunSummary(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.info.run_id,
        phase=run.data.tags.get(TAG_PHASE, "?"),
        history=history,
        eval_split=run.data.tags.get(TAG_EVAL_SPLIT),
        eval_accuracy=metrics.get("eval_accuracy"),
        eval_macro_f1=metrics.get("eval_macro_f1"),
        eval_recall={name: metrics[f"eval_recall_{name}"] for name in EMOTIONS if f"eval_recall_{name}" in metrics},
        train_seconds=metrics.get("train_seconds"),
        stopped_by=run.data.tags.get(TAG_STOPPED_BY),
        wall_seconds=(run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None,
        sittings=int(run.data.tags.get("fer.sittings", "1")),
        eval_log_loss=metrics.get("eval_log_loss"),
        eval_ece=metrics.get("eval_ece"),
        temperature=metrics.get("calibration_temperature"),
    )


# ---------------------------------------------------------------------- the table


def _points(delta: float) -> str:
    return f"{delta * 100:+.1f} pts"


def _change(delta: float, higher_is_better: bool, unit) -> str:
    if np.isnan(delta):
        return "n/a"
    if np.isclose(delta, 0.0, atol=1e-12):
        return "no change"
    better = (delta > 0) == higher_is_better
    return f"{unit(delta)} ({'better' if better else 'worse'})"


def _band_rank(value: float, bands) -> int:
    """0 for the first (best) band of `bands`, 1 for the next, ..."""
    return [label for _, label in bands].index(band(value, bands))


def _banded_change(baseline: float, final: float, bands, unit) -> str:
    """The change of a value read through word bands: better or worse only when the band changes.

    The bands are ordered best first (stable before volatile, no overfitting
    before high), so the verdict follows them: a gap going from -32 to -16
    points is still "none" and not worse, however large the raw difference.
    A value that could not be measured (NaN) gives "n/a", never a verdict.

    >>> _banded_change(0.005, 0.04, STABILITY_BANDS, lambda d: f"{d:+.3f}")
    '+0.035 (worse)'
    >>> _banded_change(-0.32, -0.16, OVERFIT_BANDS, _points)
    '+16.0 pts (same band)'
    """
    if np.isnan(baseline) or np.isnan(final):
        return "n/a"
    delta = final - baseline
    if np.isclose(delta, 0.0, atol=1e-12):
        return "no change"
    before, after = _band_rank(baseline, bands), _band_rank(final, bands)
    if before == after:
        return f"{unit(delta)} (same band)"
    return f"{unit(delta)} ({'better' if after < before else 'worse'})"


def _epoch_text(index: int) -> str:
    """A 0-based epoch index as the tables show it: MLflow's charts count steps from 0, people epochs from 1."""
    return f"epoch {index + 1}, step {index}"


def _stability_text(summary: RunSummary) -> str:
    if np.isnan(summary.volatility):
        if summary.epochs <= STABILITY_MIN_CHANGES:
            return f"n/a: {summary.epochs} epochs (needs {STABILITY_MIN_CHANGES + 1})"
        return f"n/a: fewer than {STABILITY_MIN_CHANGES} epoch-to-epoch changes without NaN"
    return f"{summary.volatility:.4f}, {band(summary.volatility, STABILITY_BANDS)}"


def _overfit_text(summary: RunSummary) -> str:
    if np.isnan(summary.overfit_gap):
        return f"n/a: no training accuracy at epoch {summary.best_epoch + 1}"
    return f"{_points(summary.overfit_gap)}, {band(summary.overfit_gap, OVERFIT_BANDS)}"


def comparison_rows(baseline: RunSummary, final: RunSummary) -> list[Row]:
    """The rows of the baseline-vs-final table, with an Improvement column.

    A figure that cannot be measured (stability of a run with fewer than 3
    epochs, say) reads "n/a: <why>" and its Improvement "n/a". The banded rows
    (stability, overfitting risk) are called better or worse by their bands.
    """
    rows = [
        Row(
            "Best validation accuracy",
            f"{baseline.best_val_accuracy:.4f} ({_epoch_text(baseline.best_epoch)})",
            f"{final.best_val_accuracy:.4f} ({_epoch_text(final.best_epoch)})",
            _change(final.best_val_accuracy - baseline.best_val_accuracy, True, _points),
        ),
        Row(
            "Best validation loss",
            f"{baseline.best_val_loss:.4f}",
            f"{final.best_val_loss:.4f}",
            _change(final.best_val_loss - baseline.best_val_loss, False, lambda d: f"{d:+.4f}"),
        ),
        Row(
            "Stability (std of epoch-to-epoch val. accuracy change)",
            _stability_text(baseline),
            _stability_text(final),
            _banded_change(baseline.volatility, final.volatility, STABILITY_BANDS, lambda d: f"{d:+.4f}"),
        ),
        Row(
            "Overfitting risk (train - val. accuracy at best epoch)",
            _overfit_text(baseline),
            _overfit_text(final),
            _banded_change(baseline.overfit_gap, final.overfit_gap, OVERFIT_BANDS, _points),
        ),
    ]
    split = "Test" if baseline.eval_split == final.eval_split == "test" else "Held-out (val; no test split)"
    for label, attr in (("accuracy", "eval_accuracy"), ("macro-F1", "eval_macro_f1")):
        b, f = getattr(baseline, attr), getattr(final, attr)
        if b is None or f is None:
            continue
        rows.append(Row(f"{split} {label}", f"{b:.4f}", f"{f:.4f}", _change(f - b, True, _points)))
    rows += _calibration_rows(baseline, final, split)
    # Accuracy hides the rare classes (FER+ has 168 contempt faces to 10,295 neutral): one row each.
    for name in EMOTIONS:
        if name in baseline.eval_recall and name in final.eval_recall:
            b, f = baseline.eval_recall[name], final.eval_recall[name]
            rows.append(Row(f"{split} recall: {name}", f"{b:.4f}", f"{f:.4f}", _change(f - b, True, _points)))
    rows.append(Row("Epochs trained", _epochs_text(baseline), _epochs_text(final), ""))
    if baseline.train_seconds is not None and final.train_seconds is not None:
        rows.append(Row("Training time (model.fit)", _fit_time_text(baseline), _fit_time_text(final), ""))
    if baseline.wall_seconds is not None and final.wall_seconds is not None:
        rows.append(Row("Wall time (run start to end, loading and evaluation included)",
                        f"{baseline.wall_seconds / 60:.1f} min", f"{final.wall_seconds / 60:.1f} min", ""))
    return rows


def _calibration_rows(baseline: RunSummary, final: RunSummary, split: str) -> list[Row]:
    """Log-loss and ECE of the served probabilities (lower is better), n/a for a run from before they were logged."""
    rows = []
    for label, attr in (("log-loss", "eval_log_loss"), ("expected calibration error (15 bins)", "eval_ece")):
        b, f = getattr(baseline, attr), getattr(final, attr)
        if b is None and f is None:
            continue
        change = "n/a" if b is None or f is None else _change(f - b, False, lambda d: f"{d:+.4f}")
        rows.append(Row(f"{split} {label}", _value_or_na(b), _value_or_na(f), change))
    if baseline.temperature is not None or final.temperature is not None:
        rows.append(Row("Calibration temperature (fitted on validation)", _temperature_text(baseline),
                        _temperature_text(final), ""))
    return rows


def _value_or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _temperature_text(summary: RunSummary) -> str:
    return "none" if summary.temperature is None else f"{summary.temperature:.3f}"


def _fit_time_text(summary: RunSummary) -> str:
    text = f"{summary.train_seconds / 60:.1f} min"
    # An interrupted sitting never got to log its fit time: only the last sitting's is known.
    return text if summary.sittings == 1 else f"{text} (last of {summary.sittings} sittings)"


def _epochs_text(summary: RunSummary) -> str:
    epochs = str(len(summary.history["val_accuracy"]))
    reasons = {"early_stopping": "early stopping", "time_limit": "time limit", "epochs": "all epochs run"}
    return f"{epochs} ({reasons[summary.stopped_by]})" if summary.stopped_by in reasons else epochs


HEADER = ("Metric", "Baseline (phase 1)", "Final (phase 2)", "Improvement")
EPOCHS_AND_STEPS = "Epochs count from 1; MLflow's charts count steps from 0: epoch N is step N-1."


def diagnostic_rows(
    client: MlflowClient, runs: tuple[Run, Run], summaries: tuple[RunSummary, RunSummary]
) -> list[Row]:
    """The measured statements of `fer.analysis.diagnostics` for both runs, side by side (histories not read again)."""
    baseline, final = (diagnose_logged_run(run, summary.history, client) for run, summary in zip(runs, summaries))
    pairs = compare_rows(baseline, final)
    return [Row(f"Diagnosis: {aspect}", b, f, "") for aspect, b, f in pairs]


def to_markdown(rows: list[Row], baseline: RunSummary, final: RunSummary) -> str:
    lines = [
        "# Baseline vs final",
        "",
        f"- Baseline: run `{baseline.run_id}` ({baseline.run_name}), {len(baseline.history['val_accuracy'])} epochs",
        f"- Final: run `{final.run_id}` ({final.run_name}), {len(final.history['val_accuracy'])} epochs",
        f"- {EPOCHS_AND_STEPS}",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += [f"| {r.metric} | {r.baseline} | {r.final} | {r.improvement} |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(HEADER)
    writer.writerows(dataclasses.astuple(r) for r in rows)
    return out.getvalue()


def to_html(rows: list[Row], baseline: RunSummary, final: RunSummary, figure_png: bytes) -> str:
    """One self-contained page: the table and the overlaid curves, the figure inlined as base64."""
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in dataclasses.astuple(r)) + "</tr>" for r in rows
    )
    image = base64.b64encode(figure_png).decode()
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Baseline vs final</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: .4em .8em; text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Baseline vs final</h1>
<p>Baseline: run <code>{html.escape(baseline.run_id)}</code> ({html.escape(baseline.run_name)});
final: run <code>{html.escape(final.run_id)}</code> ({html.escape(final.run_name)}).
{html.escape(EPOCHS_AND_STEPS)}</p>
<table><tr>{''.join(f'<th>{h}</th>' for h in HEADER)}</tr>{cells}</table>
<img alt="validation accuracy and loss of both runs" src="data:image/png;base64,{image}">
</body></html>
"""


def compare_history_figure(baseline: RunSummary, final: RunSummary) -> Figure:
    """Both runs' validation accuracy and loss overlaid by epoch (1-based, whole-epoch ticks), rate steps marked."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for summary, color, label in ((baseline, "tab:blue", "baseline"), (final, "tab:orange", "final")):
        for ax, key in zip(axes, ("val_accuracy", "val_loss")):
            values = summary.history[key]
            epochs = np.arange(1, len(values) + 1)
            ax.plot(epochs, values, marker="o", markersize=3, color=color, label=f"{label} ({summary.phase})")
            for epoch, _, new in marked_rate_steps(summary.history):
                ax.axvline(epoch + 1, color=color, linestyle="--", alpha=0.6)
                ax.annotate(f"lr {new:.0e}", (epoch + 1, 1), xycoords=("data", "axes fraction"),
                            rotation=90, va="top", ha="right", fontsize=7, color=color)
    longest = max(baseline.epochs, final.epochs)
    for ax, title in zip(axes, ("Validation accuracy", "Validation loss")):
        ax.set_title(title)
        style_epoch_axis(ax, longest)  # whole epochs: matplotlib would tick 1.0, 1.2, ... on a short run
        ax.legend()
    fig.suptitle("Baseline vs final (dashed: learning-rate steps)")
    return fig


def plot_compare_history(baseline: RunSummary, final: RunSummary, path) -> Path:
    """Write `compare_history_figure` as a PNG to `path`; returns it as a Path."""
    path = Path(path)
    with atomic_output(path, "the comparison figure") as partial:
        compare_history_figure(baseline, final).savefig(partial, dpi=110, format="png")
    return path


# ---------------------------------------------------------------------- the run


def compare(
    baseline_run_id: str | None = None,
    final_run_id: str | None = None,
    experiment: str = "fer",
) -> tuple[str, list[Row], str]:
    """Build the table, log it to a `compare` run; returns (compare run id, rows, markdown)."""
    client, experiment = client_for_command(experiment)
    runs = resolve_runs(client, experiment, baseline_run_id, final_run_id)
    baseline, final = (summarize(run, read_history(client, run.info.run_id)) for run in runs)
    rows = comparison_rows(baseline, final) + diagnostic_rows(client, runs, (baseline, final))
    markdown = to_markdown(rows, baseline, final)

    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="compare-phase1-vs-phase2") as run:
        mlflow.set_tags(
            {
                TAG_PHASE: "compare",
                TAG_RUN_KIND: RUN_KIND_COMPARE,
                "fer.baseline_run_id": baseline.run_id,
                "fer.final_run_id": final.run_id,
                "mlflow.note.content": (
                    f"Baseline run {baseline.run_id} against final run {final.run_id}.\n\n{markdown}"
                ),
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            figure = plot_compare_history(baseline, final, tmp / "compare_history.png")
            (tmp / "comparison.md").write_text(markdown)
            (tmp / "comparison.csv").write_text(to_csv(rows))
            (tmp / "comparison.html").write_text(to_html(rows, baseline, final, figure.read_bytes()))
            for name in ("comparison.md", "comparison.csv", "comparison.html"):
                mlflow.log_artifact(str(tmp / name))
            mlflow.log_artifact(str(figure), artifact_path="plots")
    return run.info.run_id, rows, markdown
