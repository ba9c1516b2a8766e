"""fer.analysis.reports: learning-rate steps, history plots, best epochs, evaluation metrics."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fer import EMOTIONS
from fer.analysis.history import learning_rate_steps
from fer.evaluation.metrics import evaluate_predictions
from fer.analysis.reports import (
    BestPerformance,
    best_performance,
    plot_confusion_matrix,
    plot_history,
    plot_reliability_diagram,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_width=400, min_height=300):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()  # raises on a truncated or corrupt file
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width >= min_width and height >= min_height
    return width, height


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib Figures fer.analysis.reports makes during the test, in order: what was drawn, not only that a PNG exists."""
    import fer.analysis.reports

    figures = []

    class RecordingFigure(fer.analysis.reports.Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            figures.append(self)

    monkeypatch.setattr(fer.analysis.reports, "Figure", RecordingFigure)
    return figures


def _history(epochs=12, step_at=7):
    """Realistic made-up curves, learning rate 1e-3 then 1e-4 from 0-based epoch `step_at`."""
    e = np.arange(epochs)
    return {
        "accuracy": (0.45 + 0.35 * (1 - np.exp(-e / 4))).tolist(),
        "loss": (1.6 * np.exp(-e / 5) + 0.45).tolist(),
        "val_accuracy": (0.42 + 0.27 * (1 - np.exp(-e / 3.5))).tolist(),
        "val_loss": (1.5 * np.exp(-e / 4) + 0.75).tolist(),
        # float32 like Keras logs it, so the rates are not exactly 1e-3 / 1e-4
        "learning_rate": np.where(e < step_at, 1e-3, 1e-4).astype(np.float32).tolist(),
    }


# ------------------------------------------------------------------ learning_rate_steps


def test_learning_rate_steps_finds_the_step_with_old_and_new_rate():
    steps = learning_rate_steps(_history(epochs=12, step_at=7))
    assert len(steps) == 1
    epoch, old, new = steps[0]
    assert epoch == 7  # 0-based index of the first epoch at the new rate
    assert old == pytest.approx(1e-3, rel=1e-6)
    assert new == pytest.approx(1e-4, rel=1e-6)


def test_learning_rate_steps_finds_every_step_in_order():
    history = {"learning_rate": [1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 2.5e-4]}
    assert learning_rate_steps(history) == [(2, 1e-3, 5e-4), (5, 5e-4, 2.5e-4)]


def test_learning_rate_steps_reads_keras2_lr_key():
    assert learning_rate_steps({"lr": [0.01, 0.001]}) == [(1, 0.01, 0.001)]


@pytest.mark.parametrize(
    "history",
    [
        {"learning_rate": [1e-3] * 10},
        {"accuracy": [0.1, 0.2], "loss": [2.0, 1.0]},
        {"learning_rate": []},
        {"learning_rate": [1e-3]},
    ],
    ids=["constant", "missing", "empty", "single-epoch"],
)
def test_learning_rate_steps_none(history):
    assert learning_rate_steps(history) == []


def test_learning_rate_steps_ignores_float_noise_but_not_small_rates():
    noisy = 1e-5 * (1 + np.array([0, 3e-8, -2e-8, 1e-7, 0]))
    assert learning_rate_steps({"learning_rate": noisy.tolist()}) == []
    # Tiny absolute change, large relative one (end of a cosine decay): a real
    # step. np.isclose's default atol=1e-8 would swallow it.
    assert learning_rate_steps({"learning_rate": [1e-8, 5e-9]}) == [(1, 1e-8, 5e-9)]


# -------------------------------------------------------------------------- plot_history


def test_plot_history_writes_png_with_lr_panel(tmp_path):
    path = plot_history(_history(), tmp_path / "history.png", title="baseline")
    assert path == tmp_path / "history.png"
    width, height = _assert_png(path)
    assert width > 2 * height  # three panels side by side


def test_plot_history_accepts_str_and_creates_parent_dirs(tmp_path):
    target = tmp_path / "artifacts" / "plots" / "history.png"
    path = plot_history(_history(), str(target))
    assert path == target
    _assert_png(target)


def test_plot_history_without_learning_rate_has_two_panels(tmp_path):
    history = _history()
    del history["learning_rate"]
    with_lr = _assert_png(plot_history(_history(), tmp_path / "with.png"))
    without_lr = _assert_png(plot_history(history, tmp_path / "without.png"))
    assert without_lr[0] < with_lr[0]  # the learning-rate panel was left out


def test_plot_history_without_validation_keys(tmp_path):
    history = {k: v for k, v in _history().items() if not k.startswith("val_")}
    _assert_png(plot_history(history, tmp_path / "noval.png"))


def test_plot_history_single_epoch(tmp_path):
    history = {k: v[:1] for k, v in _history().items()}
    _assert_png(plot_history(history, tmp_path / "one.png"))


def test_plot_history_rejects_history_without_plottable_keys(tmp_path):
    with pytest.raises(ValueError, match="history"):
        plot_history({}, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


# ------------------------------------------------------------------------ best_performance


HAND_MADE = {
    "accuracy": [0.50, 0.60, 0.70, 0.65],
    "val_accuracy": [0.40, 0.55, 0.52, 0.58],
    "loss": [1.50, 1.20, 0.90, 1.00],
    "val_loss": [1.60, 1.10, 1.30, 1.25],
}


def test_best_performance_values_and_one_based_epochs():
    best = best_performance(HAND_MADE)
    assert best == BestPerformance(
        best_train_accuracy=0.70,
        best_train_accuracy_epoch=3,
        best_val_accuracy=0.58,
        best_val_accuracy_epoch=4,
        lowest_train_loss=0.90,
        lowest_train_loss_epoch=3,
        lowest_val_loss=1.10,
        lowest_val_loss_epoch=2,
        epochs=4,
    )


def test_best_performance_text_is_aligned_and_one_based():
    text = best_performance(HAND_MADE).to_text()
    assert "Best validation accuracy: 0.5800 (epoch 4 of 4, step 3 in MLflow's charts)" in text
    assert "Lowest validation loss:" in text and "1.1000 (epoch 2 of 4, step 1 in MLflow's charts)" in text
    value_lines = [line for line in text.splitlines() if "(epoch" in line]
    assert len(value_lines) == 4
    # Aligned columns: every value starts at the same column.
    starts = {re.search(r"\d+\.\d{4}", line).start() for line in value_lines}
    assert len(starts) == 1


def test_best_performance_ignores_nan_epochs():
    history = dict(HAND_MADE, val_loss=[1.6, float("nan"), 1.3, 1.25])
    best = best_performance(history)
    assert (best.lowest_val_loss, best.lowest_val_loss_epoch) == (1.25, 4)


def test_best_performance_to_dict_is_plain_numbers():
    d = best_performance(HAND_MADE).to_dict()
    assert d["best_val_accuracy_epoch"] == 4 and d["epochs"] == 4
    assert all(type(v) in (int, float) for v in d.values())


@pytest.mark.parametrize("key", ["accuracy", "loss", "val_accuracy", "val_loss"])
def test_best_performance_names_missing_key(key):
    history = {k: v for k, v in HAND_MADE.items() if k != key}
    with pytest.raises(ValueError, match=f"'{key}'"):
        best_performance(history)


def test_best_performance_names_empty_key():
    with pytest.raises(ValueError, match="'val_loss'"):
        best_performance(dict(HAND_MADE, val_loss=[]))


# --------------------------------------------------------------------- evaluate_predictions

# 3 classes; "c" has no sample in y_true but is predicted once.
#   true a: a a b    -> recall 2/3, precision 2/2, f1 0.8
#   true b: b c      -> recall 1/2, precision 1/2, f1 0.5
NAMES = ["a", "b", "c"]
Y_TRUE = np.array([0, 0, 0, 1, 1])
Y_PRED = np.array([0, 0, 1, 1, 2])


def _probabilities(y_pred, k=3, seed=0):
    """Rows that sum to 1 and have their maximum at y_pred."""
    rng = np.random.default_rng(seed)
    p = rng.random((len(y_pred), k)) * 0.3
    p[np.arange(len(y_pred)), y_pred] = 1.0
    return p / p.sum(axis=1, keepdims=True)


@pytest.fixture
def evaluation():
    return evaluate_predictions(Y_TRUE, _probabilities(Y_PRED), NAMES, "test")


def test_evaluation_numbers_match_hand_computed(evaluation):
    assert evaluation.split == "test"
    assert evaluation.accuracy == pytest.approx(3 / 5)
    # Macro-F1 over the classes present in y_true (a, b): (0.8 + 0.5) / 2.
    # Over all three classes it would be 1.3 / 3 = 0.433.
    assert evaluation.macro_f1 == pytest.approx(0.65)
    assert evaluation.per_class["a"]["recall"] == pytest.approx(2 / 3)
    assert evaluation.per_class["a"]["precision"] == pytest.approx(1.0)
    assert evaluation.per_class["b"]["f1"] == pytest.approx(0.5)
    assert [evaluation.per_class[n]["support"] for n in NAMES] == [3, 2, 0]


def test_evaluation_confusion_counts(evaluation):
    expected = np.array([[2, 1, 0], [0, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(evaluation.confusion, expected)


def test_metrics_leave_out_zero_support_class(evaluation):
    metrics = evaluation.metrics("test")
    assert set(metrics) == {
        "test_accuracy",
        "test_macro_f1",
        "test_log_loss",
        "test_ece",
        "test_precision_a",
        "test_recall_a",
        "test_f1_a",
        "test_precision_b",
        "test_recall_b",
        "test_f1_b",
    }
    assert metrics["test_recall_a"] == pytest.approx(2 / 3)
    assert metrics["test_macro_f1"] == pytest.approx(0.65)
    assert all(isinstance(v, float) for v in metrics.values())


def test_report_text_keeps_zero_support_class(evaluation):
    rows = [line.split() for line in evaluation.report_text.splitlines() if line.strip()]
    lines = {row[0]: row for row in rows}
    assert lines["c"][-1] == "0"  # support column
    assert lines["a"][1:] == ["1.0000", "0.6667", "0.8000", "3"]  # names, digits=4
    assert "0.6500" in evaluation.report_text  # says which macro-F1 is logged


def test_evaluate_predictions_all_classes_present_uses_plain_macro_f1():
    y_true = np.array([0, 1, 2, 2])
    y_pred = np.array([0, 1, 2, 1])
    ev = evaluate_predictions(y_true, _probabilities(y_pred), NAMES, "val")
    # f1: a 1, b 2/3, c 2/3
    assert ev.macro_f1 == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert len(ev.metrics("val")) == 4 + 3 * 3
    assert "No samples" not in ev.report_text


def test_evaluation_scores_the_probabilities_log_loss_and_ece_as_fer_calibration_does(evaluation):
    from fer.evaluation.calibration import expected_calibration_error, log_loss

    probabilities = _probabilities(Y_PRED)
    metrics = evaluation.metrics("test")
    assert metrics["test_log_loss"] == pytest.approx(-np.mean(np.log(probabilities[np.arange(5), Y_TRUE])))
    assert metrics["test_log_loss"] == pytest.approx(log_loss(Y_TRUE, probabilities))
    assert metrics["test_ece"] == pytest.approx(expected_calibration_error(Y_TRUE, probabilities))
    assert len(evaluation.reliability.counts) == 15 and evaluation.reliability.total == 5
    assert f"log-loss {metrics['test_log_loss']:.4f}, expected calibration error {metrics['test_ece']:.4f}" in (
        evaluation.report_text)


def test_evaluate_predictions_accepts_one_hot_targets(evaluation):
    one_hot = np.eye(3)[Y_TRUE]
    ev = evaluate_predictions(one_hot, _probabilities(Y_PRED), NAMES, "test")
    assert ev.metrics("test") == evaluation.metrics("test")


@pytest.mark.parametrize(
    ("y_true", "probabilities", "names", "match"),
    [
        (Y_TRUE, _probabilities(Y_PRED), ["a", "b"], "shape"),
        (Y_TRUE[:4], _probabilities(Y_PRED), NAMES, "labels"),
        (np.array([0, 0, 0, 1, 3]), _probabilities(Y_PRED), NAMES, r"y_true must lie in 0\.\.2; got 0\.\.3"),
        (np.array([], dtype=int), np.empty((0, 3)), NAMES, "empty"),
    ],
    ids=["names-vs-K", "length", "label-range", "empty"],
)
def test_evaluate_predictions_rejects_bad_input(y_true, probabilities, names, match):
    with pytest.raises(ValueError, match=match):
        evaluate_predictions(y_true, probabilities, names, "test")


# -------------------------------------------------------------------- plot_confusion_matrix


def test_plot_confusion_matrix_draws_each_rows_shares_and_counts_and_marks_an_empty_row(
    tmp_path, evaluation, drawn
):
    assert evaluation.confusion[2].sum() == 0  # the row to draw grey
    path = plot_confusion_matrix(evaluation.confusion, NAMES, tmp_path / "cm.png", title="test")
    assert path == tmp_path / "cm.png"
    _assert_png(path)

    ax = drawn[0].axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    # Confusion [[2, 1, 0], [0, 1, 1], [0, 0, 0]]: row shares in percent, raw counts beneath.
    assert cells[(0, 0)] == "67%\n(2)" and cells[(0, 1)] == "33%\n(1)" and cells[(0, 2)] == "0%\n(0)"
    assert cells[(1, 1)] == "50%\n(1)" and cells[(1, 2)] == "50%\n(1)"
    assert cells[(2, 1)] == "no samples"  # one centred note instead of three NaN cells
    shares = ax.images[0].get_array()
    np.testing.assert_allclose(shares[:2].filled(), [[2 / 3, 1 / 3, 0], [0, 0.5, 0.5]])
    assert shares.mask[2].all()  # drawn grey, not as 0 %


def test_plot_confusion_matrix_emotions_and_all_zero(tmp_path):
    rng = np.random.default_rng(1)
    cm = rng.integers(0, 50, size=(8, 8))
    cm[5] = 0
    _assert_png(plot_confusion_matrix(cm, EMOTIONS, tmp_path / "cm8.png"))
    # A split with no samples at all is every row zero: still a figure, no crash.
    _assert_png(plot_confusion_matrix(np.zeros((8, 8), int), EMOTIONS, tmp_path / "zero.png"))


def test_plot_confusion_matrix_checks_shape(tmp_path):
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix(np.zeros((3, 2)), NAMES, tmp_path / "x.png")
    with pytest.raises(ValueError, match="class names"):
        plot_confusion_matrix(np.zeros((3, 3)), ["a", "b"], tmp_path / "x.png")


# --------------------------------------------------------------- plot_reliability_diagram


def test_reliability_diagram_draws_each_curves_filled_bins_shares_and_ece(tmp_path, drawn):
    from fer.evaluation.calibration import apply_temperature, reliability

    labels = np.array([0, 1, 1, 0, 1, 0])
    probabilities = np.array([[0.9, 0.05, 0.05], [0.62, 0.3, 0.08], [0.2, 0.7, 0.1],
                              [0.25, 0.25, 0.5], [0.05, 0.88, 0.07], [0.1, 0.03, 0.87]])
    before, after = reliability(labels, probabilities), reliability(labels, apply_temperature(probabilities, 2.0))
    path = plot_reliability_diagram({"before": before, "after": after}, tmp_path / "r.png", title="test")
    assert path == tmp_path / "r.png"
    _assert_png(path)

    top, bottom = drawn[0].axes
    lines = {line.get_label(): line for line in top.lines}
    assert set(lines) == {"perfect calibration", f"before (ECE {before.ece:.4f})", f"after (ECE {after.ece:.4f})"}
    # One point per non-empty bin, at (mean confidence, accuracy): bins 7, 9, 10 and 13 before scaling.
    curve = lines[f"before (ECE {before.ece:.4f})"]
    np.testing.assert_allclose(curve.get_xdata(), [0.5, 0.62, 0.7, (0.9 + 0.88 + 0.87) / 3])
    np.testing.assert_allclose(curve.get_ydata(), [0, 0, 1, 2 / 3])
    heights = [bar.get_height() for bar in bottom.patches]
    assert len(heights) == 2 * 15  # the two curves' bars side by side in every bin
    np.testing.assert_allclose(heights[:15], before.counts / 6)
    assert sum(heights[15:]) == pytest.approx(1.0)


def test_reliability_diagram_refuses_no_curves_and_curves_binned_differently(tmp_path):
    from fer.evaluation.calibration import reliability

    with pytest.raises(ValueError, match="at least one"):
        plot_reliability_diagram({}, tmp_path / "r.png")
    five, fifteen = reliability([0], [[0.7, 0.3]], n_bins=5), reliability([0], [[0.7, 0.3]])
    with pytest.raises(ValueError, match="'b' differ from those of the first"):
        plot_reliability_diagram({"a": fifteen, "b": five}, tmp_path / "r.png")


# ---------------------------------------------------------------------------- module rules


def test_reports_imports_neither_tensorflow_nor_mlflow():
    code = (
        "import sys, fer.analysis.reports; "
        "heavy = ('tensorflow', 'keras', 'mlflow', 'matplotlib.pyplot'); "
        "bad = [m for m in heavy if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
