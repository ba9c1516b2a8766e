"""Diagnostics: each statement is made, or not made, exactly when the run's numbers support it.

`diagnose` is pure: most scenarios call it on in-memory histories, with params
as strings as MLflow returns them. A few end-to-end tests log a real MLflow
run (per-step metrics, string params, tags, confusion_matrix.json) into a
temporary SQLite store and read it back with `diagnose_run`, the way a
finished training run is.
"""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from fer.analysis.diagnostics import (
    GAP_TOLERANCE,
    MIN_ACCURACY_EFFECT,
    NOISE_MULTIPLIER,
    Diagnostics,
    compare_rows,
    diagnose,
    diagnose_run,
    log_diagnostics,
)

LABELS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
WIGGLE = 0.003  # small alternating epoch-to-epoch noise


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diagnostics")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    # Own artifact folder: the default would be ./mlruns in the working folder.
    experiment_id = client.create_experiment("diagnostics-test", artifact_location=(folder / "artifacts").as_uri())
    yield client, experiment_id
    mlflow.set_tracking_uri(None)


def log_run(store, history: dict, params: dict | None = None, confusion: dict | None = None) -> str:
    """A finished run holding what a training run holds for diagnostics."""
    _, experiment_id = store
    with mlflow.start_run(experiment_id=experiment_id) as run:
        for key, values in history.items():
            for step, value in enumerate(values):
                mlflow.log_metric(key, value, step=step)
        mlflow.log_metric("epochs_trained", len(history["val_accuracy"]))
        if params:
            mlflow.log_params(params)
        if confusion is not None:
            mlflow.log_dict(confusion, "confusion_matrix.json")
    return run.info.run_id


def run_diagnostics(history, params=None, confusion=None, **kwargs) -> Diagnostics:
    """`diagnose` with params as MLflow gives them back (strings)."""
    return diagnose(history, {key: str(value) for key, value in (params or {}).items()}, confusion, **kwargs)


def wiggle(level: float, n: int, amplitude: float = WIGGLE, phase: int = 0) -> list[float]:
    return [level + amplitude * (-1) ** (i + phase) for i in range(n)]


def rates(n: int, steps: dict[int, float] | None = None, start: float = 1e-3) -> list[float]:
    """Learning rate per epoch; `steps` maps a 1-based epoch to the rate it first runs at."""
    out, rate = [], start
    for epoch in range(1, n + 1):
        rate = (steps or {}).get(epoch, rate)
        out.append(rate)
    return out


def history(val_accuracy, *, accuracy=None, loss=None, val_loss=None, learning_rate=None) -> dict:
    """A healthy run by default: both losses falling, training 3 points above validation, constant rate."""
    n = len(val_accuracy)
    return {
        "accuracy": accuracy if accuracy is not None else [v + 0.03 for v in val_accuracy],
        "loss": loss if loss is not None else [1.5 - 0.04 * i for i in range(n)],
        "val_accuracy": list(val_accuracy),
        "val_loss": val_loss if val_loss is not None else [1.6 - 0.03 * i for i in range(n)],
        "learning_rate": learning_rate if learning_rate is not None else rates(n),
    }


def params(**overrides) -> dict:
    """Params as train.py logs them (strings once in MLflow); no regularizers unless given."""
    base = {
        "config.epochs": 40,
        "config.label_smoothing": 0.0,
        "config.augmentation.rotation": 0.0,
        "config.augmentation.width_shift": 0.0,
        "config.augmentation.height_shift": 0.0,
        "config.augmentation.shear": 0.0,
        "config.augmentation.zoom": 0.0,
        "config.augmentation.horizontal_flip": False,
        "config.early_stopping.enabled": True,
        "config.early_stopping.monitor": "val_loss",
        "config.early_stopping.patience": 8,
        "config.early_stopping.restore_best_weights": True,
        "model.dropout_rates": "",
    }
    return {**base, **overrides}


def section(diagnostics: Diagnostics, aspect: str) -> list[str]:
    return dict(diagnostics.sections())[aspect]


# ------------------------------------------------------------ learning-rate steps


def test_clean_step_followed_by_a_jump_is_reported_with_its_epoch_rates_and_rise():
    val_accuracy = wiggle(0.60, 10) + wiggle(0.65, 6)
    val_loss = wiggle(1.00, 10) + wiggle(0.90, 6)
    d = run_diagnostics(history(val_accuracy, val_loss=val_loss, learning_rate=rates(16, {11: 2e-4})))

    (step,) = d.learning_rate.steps
    rise = np.mean(val_accuracy[10:13]) - np.mean(val_accuracy[7:10])  # epochs 11-13 vs 8-10
    threshold = NOISE_MULTIPLIER * np.std(np.diff(val_accuracy[2:10]))  # noise over epochs 3-10
    assert (step.epoch, step.old_rate, step.new_rate, step.verdict) == (11, 1e-3, 2e-4, "clear")
    assert step.val_accuracy_change == pytest.approx(rise)
    assert step.val_accuracy_threshold == pytest.approx(threshold)
    assert (step.before_first, step.before_last, step.after_first, step.after_last) == (8, 10, 11, 13)
    statement = section(d, "Learning-rate steps")[0]
    assert statement.startswith(
        f"Learning-rate step at epoch 11 (1e-3 -> 2e-4): followed by a {rise * 100:.1f}-point rise in validation "
        "accuracy"
    )
    assert "fall in validation loss" in statement  # 1.00 -> 0.90 is far beyond the loss noise
    assert "epochs 11-13 vs epochs 8-10" in statement


def test_step_on_a_plateau_is_reported_as_no_clear_effect():
    val_accuracy = wiggle(0.60, 16)
    d = run_diagnostics(history(val_accuracy, val_loss=wiggle(1.0, 16), learning_rate=rates(16, {11: 2e-4})))

    (step,) = d.learning_rate.steps
    assert step.verdict == "no clear effect"
    assert (step.val_accuracy_effect, step.val_loss_effect) == ("within noise", "within noise")
    statement = section(d, "Learning-rate steps")[0]
    assert statement.startswith("Learning-rate step at epoch 11 (1e-3 -> 2e-4): no clear effect")
    assert "followed by" not in statement and "rise" not in statement


def test_step_that_moves_only_the_loss_claims_the_loss_and_not_the_accuracy():
    val_loss = wiggle(1.00, 10) + wiggle(0.80, 6)
    d = run_diagnostics(history(wiggle(0.60, 16), val_loss=val_loss, learning_rate=rates(16, {11: 2e-4})))

    (step,) = d.learning_rate.steps
    assert (step.verdict, step.val_accuracy_effect, step.val_loss_effect) == ("clear", "within noise", "fall")
    before, after = np.mean(val_loss[7:10]), np.mean(val_loss[10:13])
    accuracy_change = np.mean(wiggle(0.60, 16)[10:13]) - np.mean(wiggle(0.60, 16)[7:10])
    statement = section(d, "Learning-rate steps")[0]
    assert statement.startswith(
        f"Learning-rate step at epoch 11 (1e-3 -> 2e-4): followed by a {before - after:.3f} fall in validation loss "
        f"({before:.3f} -> {after:.3f}"
    )
    assert f"validation accuracy changed by {accuracy_change * 100:+.1f} points, within noise" in statement
    assert "rise in validation accuracy" not in statement


def test_step_too_soon_after_the_start_is_not_judged():
    val_accuracy = [0.40, 0.50] + wiggle(0.70, 8)  # a jump after 2 epochs: no noise estimate possible
    d = run_diagnostics(history(val_accuracy, learning_rate=rates(10, {3: 2e-4})))

    (step,) = d.learning_rate.steps
    assert step.verdict == "too few epochs" and step.val_accuracy_threshold is None
    assert "(2 epochs at the old rate before it; at least 3 needed to measure noise)" in section(
        d, "Learning-rate steps")[0]


def test_step_too_close_to_the_end_is_not_judged():
    val_accuracy = wiggle(0.60, 10) + [0.70]  # a jump, but a single epoch at the new rate
    d = run_diagnostics(history(val_accuracy, learning_rate=rates(11, {11: 2e-4})))

    (step,) = d.learning_rate.steps
    assert step.verdict == "too few epochs"
    assert section(d, "Learning-rate steps") == [
        "Learning-rate step at epoch 11 (1e-3 -> 2e-4): too few epochs to judge its effect "
        "(1 epoch at the new rate before the end of training; at least 2 needed)."
    ]


def test_constant_rate_says_so():
    d = diagnose(history(wiggle(0.6, 5)))
    assert section(d, "Learning-rate steps") == ["The learning rate stayed at 1e-3 for all 5 epochs."]


# ------------------------------------------------------------ noise and stability


def test_noisy_curve_is_volatile_and_its_apparent_step_effect_is_not_claimed():
    before = [0.50, 0.58, 0.49, 0.59, 0.50, 0.58, 0.49, 0.59, 0.50, 0.58]
    after = [0.62, 0.53, 0.61, 0.52, 0.62, 0.53]
    val_accuracy = before + after
    val_loss = [1.4 - v for v in val_accuracy]  # as noisy as the accuracy
    d = run_diagnostics(history(val_accuracy, val_loss=val_loss, learning_rate=rates(16, {11: 2e-4})))

    (step,) = d.learning_rate.steps
    apparent = np.mean(after[:3]) - np.mean(before[-3:])
    assert apparent > MIN_ACCURACY_EFFECT  # above the floor: only the noise rule keeps it from being claimed
    assert step.val_accuracy_change == pytest.approx(apparent)
    assert step.verdict == "no clear effect"
    statement = section(d, "Learning-rate steps")[0]
    assert "no clear effect" in statement and "followed by" not in statement

    assert d.stability.before == pytest.approx(np.std(np.diff(before)))
    assert d.stability.after == pytest.approx(np.std(np.diff(after)))
    (stability,) = section(d, "Stability")
    assert "before the first learning-rate step (epochs 1-10)" in stability
    assert "(volatile)" in stability and "after it (epochs 11-16)" in stability


def test_smooth_run_without_step_is_stable_over_the_whole_run():
    d = run_diagnostics(history([0.5 + 0.005 * i for i in range(10)]))
    assert d.stability.split_epoch is None
    assert d.stability.whole_run == pytest.approx(0.0, abs=1e-9)
    assert section(d, "Stability") == [
        "Validation accuracy volatility (std of epoch-to-epoch changes) over the whole run, which had no "
        "learning-rate step: 0.0 points (stable)."
    ]


# ------------------------------------------------------------------ overfitting


def test_overfitting_onset_is_the_epoch_before_validation_loss_starts_rising():
    val_loss = [1.6, 1.4, 1.25, 1.1, 1.0, 0.92, 0.88, 0.85, 0.87, 0.90, 0.94, 0.99]
    d = run_diagnostics(history(wiggle(0.6, 12), val_loss=val_loss))

    assert (d.overfitting.onset_epoch, d.overfitting.rise_end_epoch, d.overfitting.rising_epochs) == (8, 12, 4)
    assert section(d, "Overfitting onset") == [
        "Overfitting onset after epoch 8: validation loss rose for 4 consecutive epochs (0.8500 at epoch 8 to "
        "0.9900 at epoch 12) while training loss fell (1.2200 to 1.0600)."
    ]


@pytest.mark.parametrize(
    "val_loss, loss",
    [
        # healthy: falling, with one-epoch blips
        ([1.6, 1.4, 1.45, 1.2, 1.1, 1.15, 1.0, 0.95, 0.97, 0.9], None),
        # only 2 consecutive rises
        ([1.6, 1.4, 1.2, 1.1, 1.15, 1.2, 1.0, 0.95, 0.9, 0.85], None),
        # validation loss rises 3 epochs, but training loss rises with it: not overfitting
        ([1.6, 1.4, 1.2, 1.1, 1.15, 1.2, 1.25, 1.0, 0.9, 0.85], [1.5, 1.4, 1.3, 1.2, 1.25, 1.3, 1.35, 1.1, 1.0, 0.9]),
    ],
)
def test_no_overfitting_onset_without_three_rises_against_falling_training_loss(val_loss, loss):
    d = run_diagnostics(history(wiggle(0.6, 10), val_loss=val_loss, loss=loss))
    assert d.overfitting.onset_epoch is None
    assert section(d, "Overfitting onset")[0].startswith("No overfitting onset detected")


# -------------------------------------------------------------------------- gap


REGULARIZED = {
    "model.dropout_rates": "0.2,0.3,0.4,0.5",
    "config.augmentation.rotation": 10.0,
    "config.augmentation.width_shift": 0.1,
    "config.augmentation.horizontal_flip": True,
}


def test_validation_above_training_lists_the_configured_regularizers_as_possible_causes():
    val_accuracy = [0.40 + 0.02 * i for i in range(10)]
    accuracy = [v - 0.04 for v in val_accuracy]
    d = run_diagnostics(history(val_accuracy, accuracy=accuracy), params(**REGULARIZED))

    assert d.gap.sign == "validation above train"
    assert d.gap.per_epoch == pytest.approx([-0.04] * 10)
    assert d.gap.possible_causes == (
        "dropout (rates 0.2, 0.3, 0.4, 0.5), active in training only",
        "augmentation of training batches only (horizontal_flip, rotation 10, width_shift 0.1)",
    )
    lines = section(d, "Train-validation gap")
    assert "validation above training in 10" in lines[0]
    assert lines[1] == (
        "At the end validation accuracy is above training accuracy (mean gap -4.0 points over epochs 8-10)."
    )
    assert lines[2].startswith("Possible causes, from the run's configuration (not measured here): dropout")
    assert "label smoothing" not in lines[2] and "shear" not in lines[2]  # zero in the configuration


def test_validation_above_training_without_regularizers_claims_no_cause():
    val_accuracy = [0.40 + 0.02 * i for i in range(10)]
    d = run_diagnostics(history(val_accuracy, accuracy=[v - 0.04 for v in val_accuracy]), params())

    assert d.gap.sign == "validation above train"
    assert d.gap.regularizers == () and d.gap.possible_causes == ()
    lines = section(d, "Train-validation gap")
    assert not any("Possible causes" in line for line in lines)
    assert lines[-1] == ("The run's configuration has no dropout, augmentation or label smoothing, "
                         "so none of these explains it.")


def test_unrecorded_regularizers_are_not_claimed_absent():
    val_accuracy = [0.40 + 0.02 * i for i in range(10)]
    p = {k: str(v) for k, v in params().items() if k != "model.dropout_rates"}  # e.g. a run from before it was logged
    d = diagnose(history(val_accuracy, accuracy=[v - 0.04 for v in val_accuracy]), p)
    assert d.gap.unrecorded == ("dropout",)
    assert section(d, "Train-validation gap")[-1] == (
        "The run's configuration has no augmentation or label smoothing, so none of these explains it "
        "(dropout not recorded)."
    )
    d = diagnose(history(val_accuracy, accuracy=[v - 0.04 for v in val_accuracy]))  # no params at all
    assert section(d, "Train-validation gap")[-1] == (
        "The run's configuration is not available, so no cause is suggested."
    )


def test_training_above_validation_suggests_no_causes_even_with_regularizers():
    val_accuracy = [0.40 + 0.02 * i for i in range(10)]
    d = run_diagnostics(history(val_accuracy), params(**REGULARIZED, **{"config.label_smoothing": 0.1}))

    assert d.gap.sign == "train above validation"
    assert len(d.gap.regularizers) == 3 and d.gap.possible_causes == ()
    assert not any("Possible causes" in line for line in section(d, "Train-validation gap"))


def test_gap_within_tolerance_is_about_equal():
    val_accuracy = [0.5] * 6
    d = diagnose(history(val_accuracy, accuracy=[0.5 + GAP_TOLERANCE / 2] * 6), params(**REGULARIZED))
    assert d.gap.sign == "about equal" and d.gap.possible_causes == ()


# ------------------------------------------------------------------- convergence


def test_best_at_the_last_epoch_says_more_epochs_may_help():
    d = run_diagnostics(history(wiggle(0.6, 10)), params(**{"config.epochs": 10}))
    assert d.convergence.outcome == "best at last epoch"
    assert section(d, "Convergence") == [
        "The best val_loss 1.3300 was at the last epoch (10 of 10 planned): the run was still improving when it "
        "ended, so more epochs may help."
    ]


def test_early_stopping_restored_an_earlier_epoch():
    val_loss = [1.6, 1.3, 1.1, 1.0, 1.02, 1.05, 1.01, 1.03, 1.04, 1.06, 1.02, 1.05]
    d = run_diagnostics(history(wiggle(0.6, 12), val_loss=val_loss), params())

    c = d.convergence
    assert (c.outcome, c.best_epoch, c.epochs, c.planned_epochs, c.model_epoch) == ("stopped early", 4, 12, 40, 4)
    assert section(d, "Convergence") == [
        "Early stopping (monitor val_loss, patience 8) ended training at epoch 12 of 40 planned; the best "
        "val_loss 1.0000 was at epoch 4, 8 epochs before the end, and its weights were restored "
        "(restore_best_weights)."
    ]
    assert "more epochs may help" not in " ".join(d.statements())


@pytest.mark.parametrize(
    "val_loss, statement",
    [
        ([1.6, 1.3, 1.1, 1.0, 1.02, 1.05], "The time limit (max_minutes) ended training at epoch 6 of 40 planned; "
         "the best val_loss 1.0000 was at epoch 4, 2 epochs before the end, and its weights were restored "
         "(restore_best_weights)."),
        ([1.6, 1.3, 1.1, 1.0, 0.95, 0.9], "The time limit (max_minutes) ended training at epoch 6 of 40 planned; "
         "the best val_loss 0.9000 was at epoch 6, the last: the run was still improving, so more time may help."),
    ],
)
def test_a_recorded_time_limit_is_named_as_what_ended_training_not_early_stopping(val_loss, statement):
    d = run_diagnostics(history(wiggle(0.6, 6), val_loss=val_loss), params(), stopped_by="time_limit")
    assert d.convergence.outcome == "time limit"
    assert section(d, "Convergence") == [statement]
    assert "Early stopping (monitor" not in " ".join(d.statements())


@pytest.mark.parametrize(
    "first_epoch_tag, model_epoch, ending",
    [
        ("5", 6, "; the run was resumed, and restore_best_weights covers only its last sitting (epochs 5-6), "
                 "so the model holds epoch 6's weights."),
        (None, None, "; the run was resumed, and restore_best_weights covers only its last sitting, so the model "
                     "holds that sitting's best weights, not necessarily epoch 4's."),
    ],
)
def test_a_resumed_run_does_not_claim_weights_its_last_sitting_never_saw(store, first_epoch_tag, model_epoch, ending):
    client, _ = store
    run_id = log_run(store, history(wiggle(0.6, 6), val_loss=[1.6, 1.3, 1.1, 1.0, 1.05, 1.02]), params())
    client.set_tag(run_id, "fer.stopped_by", "time_limit")
    client.set_tag(run_id, "fer.sittings", "2")
    if first_epoch_tag:
        client.set_tag(run_id, "fer.sitting_2.first_epoch", first_epoch_tag)
    d = diagnose_run(run_id, client)
    assert (d.convergence.best_epoch, d.convergence.model_epoch) == (4, model_epoch)
    assert section(d, "Convergence") == [
        "The time limit (max_minutes) ended training at epoch 6 of 40 planned; the best val_loss 1.0000 was at "
        "epoch 4, 2 epochs before the end" + ending
    ]


def test_ran_all_epochs_with_an_earlier_best_follows_the_early_stopping_monitor():
    val_accuracy = [0.40, 0.50, 0.62, 0.58, 0.60, 0.59]  # best at epoch 3; val_loss keeps falling
    p = params(**{"config.epochs": 6, "config.early_stopping.monitor": "val_accuracy"})
    d = run_diagnostics(history(val_accuracy), p)

    c = d.convergence
    assert (c.monitor, c.outcome, c.best_epoch) == ("val_accuracy", "best earlier", 3)
    assert section(d, "Convergence") == [
        "Training ran all 6 planned epochs; the best val_accuracy 0.6200 was at epoch 3, with no improvement in "
        "the last 3 epochs. Early stopping's restore_best_weights keeps the epoch-3 weights."
    ]
    assert d.gap.best_epoch == 3  # the gap's "best epoch" is the same one


# --------------------------------------------------------------------- per class


def confusion_matrix() -> dict:
    counts = np.zeros((8, 8), dtype=int)
    support = [300, 350, 200, 415, 250, 20, 90, 0]  # contempt: none in the split
    for i, n in enumerate(support):
        counts[i, i] = n
    counts[3, 3], counts[3, 0], counts[3, 4] = 360, 41, 14  # sadness -> neutral 41
    counts[5, 5], counts[5, 4], counts[5, 3] = 5, 12, 3  # disgust: 5 of 20 right
    counts[6, 6], counts[6, 2] = 60, 30  # fear -> surprise 30
    counts[0, 0], counts[0, 3] = 280, 20
    return {"split": "test", "labels": LABELS, "counts": counts.tolist()}


def test_weakest_classes_and_most_confused_pairs_come_with_counts():
    d = run_diagnostics(history(wiggle(0.6, 6)), params(), confusion_matrix())

    assert [c.name for c in d.classes.lowest_recall] == ["disgust", "fear", "sadness"]
    assert d.classes.recall[LABELS.index("contempt")] is None
    assert section(d, "Weakest classes") == [
        "Lowest recall on the test split: disgust 25.0% (5 of 20), fear 66.7% (60 of 90), "
        "sadness 86.7% (360 of 415).",
        "Confusion #1 on the test split: sadness -> neutral: 41 of 415 sadness faces (9.9%).",
        "Confusion #2 on the test split: fear -> surprise: 30 of 90 fear faces (33.3%).",
        "Confusion #3 on the test split: neutral -> sadness: 20 of 300 neutral faces (6.7%).",
        "No faces of contempt in the test split: recall not measured.",
    ]


def test_run_without_confusion_matrix_skips_per_class():
    d = run_diagnostics(history(wiggle(0.6, 6)), params())
    assert d.classes is None
    assert section(d, "Weakest classes") == ["No confusion matrix in the run: per-class diagnostics skipped."]


# ------------------------------------------------------ MLflow round trip, compare


def test_diagnose_run_reads_what_diagnose_gets(store):
    client, _ = store
    h = history(wiggle(0.60, 10) + wiggle(0.65, 6), learning_rate=rates(16, {11: 2e-4}))
    p, confusion = params(**REGULARIZED), confusion_matrix()
    run_id = log_run(store, h, p, confusion)
    client.log_metric(run_id, "val_accuracy", 0.1, step=3)  # epoch 4 logged again: the latest value counts
    h["val_accuracy"][3] = 0.1
    from_run = diagnose_run(run_id, client)
    assert from_run == diagnose(h, {k: str(v) for k, v in p.items()}, confusion)
    assert from_run.stability != diagnose(history(wiggle(0.60, 10) + wiggle(0.65, 6))).stability


def test_log_diagnostics_writes_markdown_and_json_that_round_trip(store, tmp_path):
    client, experiment_id = store
    h = history(wiggle(0.60, 10) + wiggle(0.65, 6), learning_rate=rates(16, {11: 2e-4}))
    run_id = log_run(store, h, params(**REGULARIZED), confusion_matrix())
    d = diagnose_run(run_id, client)

    log_diagnostics(d, run_id)  # a finished run, by id
    with mlflow.start_run(experiment_id=experiment_id) as active:
        log_diagnostics(d)  # the active run
    for target in (run_id, active.info.run_id):
        folder = tmp_path / target
        folder.mkdir()
        text = Path(client.download_artifacts(target, "diagnostics.md", str(folder))).read_text()
        data = json.loads(Path(client.download_artifacts(target, "diagnostics.json", str(folder))).read_text())
        assert data == d.to_dict()
        for heading, statements in d.sections():
            assert f"## {heading}\n" in text
            assert all(f"- {s}\n" in text for s in statements)
    assert data["epoch_numbering"] == "1-based" and data["statements"] == d.statements()
    assert data["learning_rate"]["steps"][0]["epoch"] == 11


def test_log_diagnostics_without_a_run_refuses_rather_than_start_one():
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        log_diagnostics(diagnose(history(wiggle(0.6, 6))))


def test_compare_rows_put_both_runs_side_by_side():
    baseline = run_diagnostics(history(wiggle(0.6, 10)), params(**{"config.epochs": 10}))
    final = run_diagnostics(
        history(wiggle(0.60, 10) + wiggle(0.65, 6), learning_rate=rates(16, {11: 2e-4})),
        params(**REGULARIZED),
        confusion_matrix(),
    )
    rows = compare_rows(baseline, final)
    assert [aspect for aspect, _, _ in rows] == [
        "Learning-rate steps", "Train-validation gap", "Overfitting onset", "Stability", "Convergence",
        "Weakest classes",
    ]
    rows = {aspect: (b, f) for aspect, b, f in rows}
    assert rows["Learning-rate steps"] == (
        "The learning rate stayed at 1e-3 for all 10 epochs.", section(final, "Learning-rate steps")[0]
    )
    assert "more epochs may help" in rows["Convergence"][0]
    assert rows["Weakest classes"][0].startswith("No confusion matrix")
    assert rows["Weakest classes"][1].startswith("Lowest recall on the test split: disgust 25.0%")
    assert all("\n" not in cell and "|" not in cell for b, f in rows.values() for cell in (b, f))


def test_statements_summary_and_markdown_agree():
    d = diagnose(history(wiggle(0.60, 10) + wiggle(0.65, 6), learning_rate=rates(16, {11: 2e-4})), params(),
                 confusion_matrix())
    assert d.statements() == [s for _, lines in d.sections() for s in lines]
    summary = d.summary()
    assert summary.startswith("Diagnostics (16 epochs, numbered from 1: epoch N is step N-1 in MLflow's charts):")
    assert "epoch 11 (1e-3 -> 2e-4): followed by a" in summary
    assert len(summary.splitlines()) <= 8


def test_missing_history_is_named():
    h = history(wiggle(0.6, 4))
    del h["val_loss"]
    with pytest.raises(ValueError, match="val_loss"):
        diagnose(h)


def test_a_continuous_decay_is_described_as_such_not_as_a_step_per_epoch():
    decaying = [1e-3 * (1 - i / 6) + 1e-5 for i in range(6)]
    run = history([0.5, 0.6, 0.65, 0.7, 0.72, 0.73], learning_rate=decaying)
    result = diagnose(run, params(**{"config.lr_schedule": "linear"}))
    assert result.learning_rate.steps == ()
    assert result.learning_rate.statements(6) == [
        "The learning rate followed a linear decay, updated every step rather than in steps: "
        "1.01e-3 at the end of epoch 1, 1.77e-4 at the end of epoch 6."
    ]
    assert "no learning-rate step" in result.stability.statements()[0]
    # The same rates under the plateau schedule are five steps, each judged.
    assert len(diagnose(run, params(**{"config.lr_schedule": "plateau"})).learning_rate.steps) == 5
