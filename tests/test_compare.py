"""The baseline-vs-final table: numbers straight from the runs' metric histories."""

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from PIL import Image

from conftest import run_or_fail
from fer.cli import main
from fer.analysis.compare import CompareError, RunSummary, comparison_rows, resolve_runs
from fer.analysis.history import OVERFIT_BANDS, STABILITY_BANDS, band


def summary(val_accuracy, accuracy, val_loss, **kwargs) -> RunSummary:
    history = {"val_accuracy": val_accuracy, "accuracy": accuracy, "val_loss": val_loss}
    defaults = dict(run_id="r", run_name="r", phase="p", eval_split="test", eval_accuracy=None, eval_macro_f1=None)
    return RunSummary(history=history, **{**defaults, **kwargs})


def test_rows_are_computed_from_the_histories():
    baseline = summary([0.40, 0.50, 0.45], [0.42, 0.55, 0.60], [1.5, 1.2, 1.3], eval_accuracy=0.48, eval_macro_f1=0.3)
    final = summary([0.50, 0.60, 0.62], [0.45, 0.58, 0.75], [1.3, 1.0, 0.9], eval_accuracy=0.61, eval_macro_f1=0.5)
    rows = {row.metric.split(" (")[0]: row for row in comparison_rows(baseline, final)}
    assert rows["Best validation accuracy"].baseline == "0.5000 (epoch 2, step 1)"  # MLflow's charts count from 0
    assert rows["Best validation accuracy"].final == "0.6200 (epoch 3, step 2)"
    assert rows["Best validation accuracy"].improvement == "+12.0 pts (better)"
    assert rows["Best validation loss"].improvement == "-0.3000 (better)"
    assert rows["Stability"].baseline.startswith(f"{np.std(np.diff([0.40, 0.50, 0.45])):.4f}")
    assert rows["Overfitting risk"].baseline.startswith("+5.0 pts")  # 0.55 - 0.50 at epoch 2
    assert rows["Overfitting risk"].final.startswith("+13.0 pts, high")  # 0.75 - 0.62 at epoch 3
    assert rows["Test accuracy"].improvement == "+13.0 pts (better)"
    assert rows["Test macro-F1"].final == "0.5000"


def test_per_class_recall_rows_cover_the_classes_both_runs_measured():
    baseline = summary([0.5], [0.5], [1.0], eval_recall={"neutral": 0.8, "contempt": 0.0, "fear": 0.25},
                       stopped_by="early_stopping", train_seconds=90.0)
    final = summary([0.6], [0.6], [0.9], eval_recall={"neutral": 0.75, "contempt": 0.5},
                    stopped_by="time_limit", train_seconds=3600.0, wall_seconds=3900.0, sittings=2)
    rows = {r.metric: r for r in comparison_rows(baseline, final)}
    assert rows["Test recall: contempt"].improvement == "+50.0 pts (better)"
    assert rows["Test recall: neutral"].improvement == "-5.0 pts (worse)"
    assert "Test recall: fear" not in rows  # the final run has no fear faces to measure
    assert (rows["Epochs trained"].baseline, rows["Epochs trained"].final) == ("1 (early stopping)", "1 (time limit)")
    assert rows["Training time (model.fit)"].final == "60.0 min (last of 2 sittings)"
    assert rows["Training time (model.fit)"].baseline == "1.5 min"
    assert "Wall time (run start to end, loading and evaluation included)" not in rows  # the baseline has none


def test_a_two_epoch_pair_says_what_it_cannot_measure():
    # One epoch-to-epoch change each: its std would be 0.0000, "stable", for any run.
    baseline = summary([0.30, 0.50], [0.20, 0.30], [1.5, 1.2])
    final = summary([0.40, 0.55], [0.25, 0.45], [1.4, 1.1])
    rows = {row.metric.split(" (")[0]: row for row in comparison_rows(baseline, final)}
    stability = rows["Stability"]
    assert (stability.baseline, stability.final) == ("n/a: 2 epochs (needs 3)", "n/a: 2 epochs (needs 3)")
    assert stability.improvement == "n/a"
    # -20 -> -10 points: both "none", so not called worse although the gap grew.
    overfit = rows["Overfitting risk"]
    assert overfit.baseline == "-20.0 pts, none (validation above training)"
    assert overfit.final == "-10.0 pts, none (validation above training)"
    assert overfit.improvement == "+10.0 pts (same band)"


def test_banded_rows_follow_the_band_not_the_sign():
    calm = summary([0.50, 0.51, 0.50, 0.51], [0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0])
    jumpy = summary([0.40, 0.55, 0.45, 0.60], [0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0])
    calmer = summary([0.50, 0.505, 0.50, 0.505], [0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0])
    better = {r.metric.split(" (")[0]: r for r in comparison_rows(jumpy, calm)}["Stability"]
    worse = {r.metric.split(" (")[0]: r for r in comparison_rows(calm, jumpy)}["Stability"]
    same = {r.metric.split(" (")[0]: r for r in comparison_rows(calm, calmer)}["Stability"]
    assert better.improvement.endswith("(better)") and worse.improvement.endswith("(worse)")
    assert same.improvement.endswith("(same band)") and same.final.endswith("stable")
    # Training accuracy NaN at the best epoch: the gap is not measured, and not judged.
    blind = summary([0.4, 0.5], [0.4, float("nan")], [1.0, 0.9])
    gap = {r.metric.split(" (")[0]: r for r in comparison_rows(blind, calm)}["Overfitting risk"]
    assert gap.baseline == "n/a: no training accuracy at epoch 2" and gap.improvement == "n/a"


def test_compare_history_figure_has_whole_epoch_ticks(tmp_path):
    from fer.analysis.compare import compare_history_figure

    baseline = summary([0.40, 0.50], [0.4, 0.5], [1.2, 1.1])
    final = summary([0.45, 0.55], [0.45, 0.55], [1.1, 1.0])
    figure = compare_history_figure(baseline, final)
    for ax in figure.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [1.0, 2.0]


def test_rows_without_evaluation_leave_test_rows_out():
    run = summary([0.4, 0.5], [0.4, 0.5], [1.0, 0.9])
    metrics = [r.metric for r in comparison_rows(run, run)]
    assert metrics[3].startswith("Overfitting") and metrics[4:] == ["Epochs trained"]


def test_calibration_rows_compare_log_loss_and_ece_lower_is_better_and_show_the_temperature():
    baseline = summary([0.5], [0.5], [1.0], eval_accuracy=0.5, eval_macro_f1=0.4, eval_log_loss=1.25, eval_ece=0.08)
    final = summary([0.6], [0.6], [0.9], eval_accuracy=0.6, eval_macro_f1=0.5, eval_log_loss=1.05, eval_ece=0.11,
                    temperature=1.4321)
    rows = {r.metric: r for r in comparison_rows(baseline, final)}
    loss, ece = rows["Test log-loss"], rows["Test expected calibration error (15 bins)"]
    assert (loss.baseline, loss.final, loss.improvement) == ("1.2500", "1.0500", "-0.2000 (better)")
    assert (ece.baseline, ece.final, ece.improvement) == ("0.0800", "0.1100", "+0.0300 (worse)")
    temperature = rows["Calibration temperature (fitted on validation)"]
    assert (temperature.baseline, temperature.final) == ("none", "1.432")
    metrics = list(rows)
    assert metrics.index("Test macro-F1") + 1 == metrics.index("Test log-loss")  # beside the other test figures


def test_calibration_rows_say_n_a_for_a_run_from_before_they_were_logged():
    old = summary([0.5], [0.5], [1.0], eval_accuracy=0.5, eval_macro_f1=0.4)
    new = summary([0.6], [0.6], [0.9], eval_accuracy=0.6, eval_macro_f1=0.5, eval_log_loss=1.05, eval_ece=0.11)
    rows = {r.metric: r for r in comparison_rows(old, new)}
    loss = rows["Test log-loss"]
    assert (loss.baseline, loss.final, loss.improvement) == ("n/a", "1.0500", "n/a")
    assert "Calibration temperature (fitted on validation)" not in rows  # neither run fitted one
    assert not any("log-loss" in r.metric or "calibration" in r.metric for r in comparison_rows(old, old))


@pytest.mark.parametrize(
    "value, bands, label",
    [
        (0.005, STABILITY_BANDS, "stable"),
        (0.02, STABILITY_BANDS, "moderately volatile"),
        (0.2, STABILITY_BANDS, "volatile"),
        (-0.03, OVERFIT_BANDS, "none (validation above training)"),
        (0.0, OVERFIT_BANDS, "none (validation above training)"),
        (0.03, OVERFIT_BANDS, "low"),
        (0.07, OVERFIT_BANDS, "moderate"),
        (0.15, OVERFIT_BANDS, "high"),
    ],
)
def test_word_labels(value, bands, label):
    assert band(value, bands) == label


def test_missing_phase_says_which_command_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(main, ["compare", "--experiment", "empty"])
    assert result.exit_code == 1
    assert "No finished phase1 run in experiment 'empty'" in result.output
    assert "mlflow run . -e phase1" in result.output and "Traceback" not in result.output


def test_latest_leaves_sweep_trials_out(tmp_path):
    # What a user has after `fer sweep` and then phase 1 and phase 2: the trials are phase-2 runs too.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("fer")

    def finished_run(phase: str, start: int, **tags) -> str:
        run = client.create_run(experiment_id, start_time=start, tags={"fer.phase": phase, **tags})
        client.set_terminated(run.info.run_id, "FINISHED", end_time=start + 1)
        return run.info.run_id

    baseline = finished_run("phase1", 1000)
    final = finished_run("phase2", 2000)
    finished_run("phase2", 3000, **{"fer.sweep": "demo", "fer.sweep_trial": "0"})
    found = resolve_runs(client, "fer", None, None)
    assert [run.info.run_id for run in found] == [baseline, final]

    trial_only = client.create_experiment("only-trials")
    run = client.create_run(trial_only, tags={"fer.phase": "phase2", "fer.sweep_trial": "0"})
    client.set_terminated(run.info.run_id, "FINISHED")
    finished = client.create_run(trial_only, tags={"fer.phase": "phase1"})
    client.set_terminated(finished.info.run_id, "FINISHED")
    with pytest.raises(CompareError, match="sweep trials are left out: name one with --final-run"):
        resolve_runs(client, "only-trials", None, None)
    assert resolve_runs(client, "only-trials", None, run.info.run_id)[1].info.run_id == run.info.run_id


@pytest.mark.slow
def test_compare_entry_point_logs_a_table_that_matches_the_runs(trained_store, tmp_path):
    uri, client, runs, folder = trained_store
    result = run_or_fail("compare", {}, uri, folder)
    assert "Best validation accuracy" in result.stdout

    compare_runs = client.search_runs(
        [runs["phase1"].info.experiment_id], filter_string="tags.`fer.phase` = 'compare'"
    )
    assert len(compare_runs) == 1
    compare_run = compare_runs[0]
    assert compare_run.data.tags["fer.baseline_run_id"] == runs["phase1"].info.run_id
    assert compare_run.data.tags["fer.final_run_id"] == runs["phase2"].info.run_id

    local = Path(client.download_artifacts(compare_run.info.run_id, "", str(tmp_path)))
    table = {row["Metric"].split(" (")[0]: row for row in csv.DictReader(io.StringIO((local / "comparison.csv").read_text()))}
    for phase, column in (("phase1", "Baseline (phase 1)"), ("phase2", "Final (phase 2)")):
        run_id = runs[phase].info.run_id
        history = {
            key: [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
            for key in ("val_accuracy", "val_loss", "accuracy")
        }
        best = int(np.argmax(history["val_accuracy"]))
        assert table["Best validation accuracy"][column] == (
            f"{history['val_accuracy'][best]:.4f} (epoch {best + 1}, step {best})"
        )
        assert table["Best validation loss"][column] == f"{min(history['val_loss']):.4f}"
        # Two epochs, one change: too few for a std (a lone change's std is 0, "stable", for any run).
        assert table["Stability"][column] == "n/a: 2 epochs (needs 3)"
        gap = history["accuracy"][best] - history["val_accuracy"][best]
        assert table["Overfitting risk"][column].startswith(f"{gap * 100:+.1f} pts")
        assert table["Test accuracy"][column] == f"{runs[phase].data.metrics['eval_accuracy']:.4f}"
        assert table["Test macro-F1"][column] == f"{runs[phase].data.metrics['eval_macro_f1']:.4f}"
        assert table["Test log-loss"][column] == f"{runs[phase].data.metrics['eval_log_loss']:.4f}"
        assert table["Test expected calibration error"][column] == f"{runs[phase].data.metrics['eval_ece']:.4f}"

        for name in ("neutral", "happiness", "surprise"):  # classes the synthetic test split holds
            assert table[f"Test recall: {name}"][column] == f"{runs[phase].data.metrics[f'eval_recall_{name}']:.4f}"
        assert table["Epochs trained"][column] == "2 (all epochs run)"
        assert table["Training time"][column] == f"{runs[phase].data.metrics['train_seconds'] / 60:.1f} min"
        info = runs[phase].info
        assert table["Wall time"][column] == f"{(info.end_time - info.start_time) / 60000:.1f} min"

    assert table["Stability"]["Improvement"] == "n/a"  # not measured, so neither better nor worse
    assert "Diagnosis: Overfitting onset" in table and "Diagnosis: Learning-rate steps" in table

    page = (local / "comparison.html").read_text()
    assert "data:image/png;base64," in page and "<table>" in page and 'src="http' not in page
    assert "| Best validation accuracy |" in (local / "comparison.md").read_text()
    with Image.open(local / "plots" / "compare_history.png") as image:
        assert image.format == "PNG"


@pytest.mark.slow
def test_diagnose_command_writes_the_analysis_to_a_run(trained_store, tmp_path, monkeypatch):
    uri, client, runs, _ = trained_store
    run_id = runs["phase2"].info.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = CliRunner().invoke(main, ["diagnose", run_id])
    assert result.exit_code == 0, result.output
    assert "Overfitting" in result.output
    local = Path(client.download_artifacts(run_id, "diagnostics.md", str(tmp_path)))
    assert local.read_text().strip() == result.stdout.strip()  # stderr may hold download progress
