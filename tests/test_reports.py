"""History plots, the best-performance report and evaluation numbers."""

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score

from fer.data.splits import EMOTIONS
from fer.reports import (
    best_performance,
    evaluate_predictions,
    learning_rate_steps,
    plot_confusion_matrix,
    plot_history,
)

HISTORY = {
    "accuracy": [0.40, 0.55, 0.62, 0.70],
    "val_accuracy": [0.45, 0.58, 0.57, 0.61],
    "loss": [1.8, 1.3, 1.1, 0.9],
    "val_loss": [1.7, 1.25, 1.3, 1.2],
    "learning_rate": [1e-3, 1e-3, 2e-4, 2e-4],
}


def assert_png(path, min_width=400):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.width >= min_width and image.height >= 200


def test_learning_rate_steps_finds_the_first_epoch_at_the_new_rate():
    assert learning_rate_steps(HISTORY) == [(2, pytest.approx(1e-3), pytest.approx(2e-4))]
    assert learning_rate_steps({"learning_rate": [1e-3] * 5}) == []
    assert learning_rate_steps({"accuracy": [0.1, 0.2]}) == []
    # float32 round-trip noise is not a step
    assert learning_rate_steps({"learning_rate": [1e-3, float(np.float32(1e-3)), 1e-3]}) == []


@pytest.mark.parametrize(
    "history",
    [
        HISTORY,
        {k: v for k, v in HISTORY.items() if k != "learning_rate"},
        {"accuracy": [0.4, 0.5], "loss": [1.5, 1.2]},  # no validation
        {k: v[:1] for k, v in HISTORY.items()},  # a single epoch
    ],
)
def test_plot_history_writes_a_png(history, tmp_path):
    path = plot_history(history, tmp_path / "history.png", title="test")
    assert_png(path)


def test_best_performance_picks_values_and_one_based_epochs():
    best = best_performance(HISTORY)
    assert (best.best_val_accuracy, best.best_val_accuracy_epoch) == (0.61, 4)
    assert (best.lowest_val_loss, best.lowest_val_loss_epoch) == (1.2, 4)
    assert (best.best_train_accuracy, best.lowest_train_loss_epoch) == (0.70, 4)
    assert best.epochs == 4
    assert "Best validation accuracy: 0.6100 (epoch 4 of 4)" in best.to_text()


def test_best_performance_names_a_missing_key():
    with pytest.raises(ValueError, match="val_loss"):
        best_performance({k: v for k, v in HISTORY.items() if k != "val_loss"})


def test_evaluation_numbers_match_hand_computed_values():
    y_true = np.array([0, 0, 1, 1, 1, 3])
    predicted = np.array([0, 1, 1, 1, 0, 3])
    probabilities = np.eye(8)[predicted] * 0.9 + 0.1 / 8
    evaluation = evaluate_predictions(y_true, probabilities, EMOTIONS, "test")
    assert evaluation.accuracy == pytest.approx(4 / 6)
    assert evaluation.per_class["happiness"]["recall"] == pytest.approx(2 / 3)
    assert evaluation.per_class["neutral"]["precision"] == pytest.approx(1 / 2)
    assert evaluation.macro_f1 == pytest.approx(f1_score(y_true, predicted, labels=[0, 1, 3], average="macro"))
    assert evaluation.confusion[1, 0] == 1 and evaluation.confusion[0, 1] == 1 and evaluation.confusion.sum() == 6
    metrics = evaluation.metrics("eval")
    assert metrics["eval_recall_happiness"] == pytest.approx(2 / 3)
    assert "eval_recall_contempt" not in metrics  # no contempt faces: no fake zero
    assert "contempt" in evaluation.report_text


def test_confusion_matrix_plot_handles_a_class_without_faces(tmp_path):
    counts = np.zeros((8, 8), int)
    counts[0, 0], counts[1, 0], counts[1, 1] = 5, 2, 3
    assert_png(plot_confusion_matrix(counts, EMOTIONS, tmp_path / "cm.png", "test"))
