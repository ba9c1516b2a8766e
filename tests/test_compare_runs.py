"""Compare on real runs in SQLite: the table and diagnostics text of a fixed pair pinned, and NaN epochs.

Two runs are logged into a real SQLite store (histories, params, evaluation
metrics, confusion_matrix.json); `fer.analysis.compare.compare` reads them back and
builds the table. The expected text was written by the code before the
history analysis moved to `fer.analysis.history`; any change to it must be deliberate
(regenerate with FER_UPDATE_GOLDEN=1 and review the diff).
"""

import os
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from fer.analysis import compare as fer_compare
from fer.data.splits import EMOTIONS
from fer.analysis.diagnostics import diagnose_run

GOLDEN = Path(__file__).parent / "golden"
EXPERIMENT = "pinned"


def _confusion(seed: int) -> dict:
    counts = np.random.default_rng(seed).integers(0, 40, (8, 8))
    counts[np.diag_indices(8)] += 120
    counts[7] = 0  # contempt: no faces in the split
    return {"split": "test", "labels": list(EMOTIONS), "counts": counts.tolist()}


def training_params(epochs, patience, label_smoothing, rotation, flip, dropout) -> dict[str, str]:
    """The params diagnostics read, as train.py logs them (strings in MLflow)."""
    return {
        "config.epochs": str(epochs), "config.early_stopping.enabled": "True",
        "config.early_stopping.monitor": "val_loss", "config.early_stopping.patience": str(patience),
        "config.early_stopping.restore_best_weights": "True", "config.label_smoothing": str(label_smoothing),
        "config.augmentation.rotation": str(rotation), "config.augmentation.horizontal_flip": str(flip),
        "model.dropout_rates": dropout,
    }


BASELINE = {
    "history": {
        "accuracy": [0.30, 0.41, 0.48, 0.53, 0.57, 0.60, 0.62, 0.64],
        "loss": [1.90, 1.60, 1.42, 1.31, 1.22, 1.15, 1.10, 1.06],
        "val_accuracy": [0.33, 0.40, 0.47, 0.49, 0.52, 0.51, 0.53, 0.52],
        "val_loss": [1.80, 1.62, 1.49, 1.44, 1.40, 1.42, 1.41, 1.43],
        "learning_rate": [1e-3] * 6 + [2e-4] * 2,
    },
    "params": training_params(epochs=8, patience=3, label_smoothing=0.0, rotation=0.0, flip=False, dropout=""),
    "tags": {"fer.phase": "phase1", "fer.eval_split": "test", "fer.stopped_by": "epochs"},
    "metrics": {"eval_accuracy": 0.5012, "eval_macro_f1": 0.3721, "train_seconds": 95.0},
    "confusion": _confusion(1),
}

FINAL = {
    "history": {
        "accuracy": [0.28, 0.37, 0.45, 0.50, 0.54, 0.58, 0.60, 0.63, 0.66, 0.67, 0.68, 0.69],
        "loss": [1.95, 1.70, 1.50, 1.38, 1.29, 1.20, 1.15, 1.08, 1.01, 0.99, 0.97, 0.96],
        "val_accuracy": [0.35, 0.44, 0.51, 0.55, 0.58, 0.57, 0.60, 0.59, 0.64, 0.65, 0.645, 0.65],
        "val_loss": [1.70, 1.50, 1.36, 1.27, 1.21, 1.22, 1.16, 1.17, 1.05, 1.03, 1.035, 1.03],
        "learning_rate": [1e-3] * 8 + [2e-4] * 4,
    },
    "params": training_params(epochs=40, patience=8, label_smoothing=0.1, rotation=15.0, flip=True,
                              dropout="0.25,0.5"),
    "tags": {"fer.phase": "phase2", "fer.eval_split": "test", "fer.stopped_by": "time_limit"},
    "metrics": {"eval_accuracy": 0.6377, "eval_macro_f1": 0.5102, "train_seconds": 310.0},
    "confusion": _confusion(2),
}


def log_run(client: MlflowClient, experiment_id: str, spec: dict) -> str:
    """A finished training run holding what compare and diagnostics read, with fixed start and end times."""
    run = client.create_run(experiment_id, start_time=1_700_000_000_000, tags=spec["tags"],
                            run_name=spec["tags"]["fer.phase"])
    run_id = run.info.run_id
    metrics = [Metric(key, value, 1_700_000_000_000 + step, step)
               for key, values in spec["history"].items() for step, value in enumerate(values)]
    metrics += [Metric(key, value, 1_700_000_001_000, 0) for key, value in spec["metrics"].items()]
    recall = np.diag(spec["confusion"]["counts"]) / np.maximum(np.sum(spec["confusion"]["counts"], axis=1), 1)
    metrics += [Metric(f"eval_recall_{name}", float(r), 1_700_000_001_000, 0)
                for name, r, row in zip(EMOTIONS, recall, spec["confusion"]["counts"]) if sum(row)]
    client.log_batch(run_id, metrics=metrics)
    for key, value in spec["params"].items():
        client.log_param(run_id, key, value)
    client.log_dict(run_id, spec["confusion"], "confusion_matrix.json")
    client.set_terminated(run_id, end_time=1_700_000_600_000)
    return run_id


@pytest.fixture
def pinned_runs(in_process, tmp_path):
    """(client, baseline run id, final run id): the pinned runs, logged into conftest's `in_process` store."""
    client = in_process
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri())
    return client, log_run(client, experiment_id, BASELINE), log_run(client, experiment_id, FINAL)


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("FER_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_compare_table_is_unchanged_for_a_fixed_pair_of_runs(pinned_runs):
    client, baseline_id, final_id = pinned_runs
    _, _, markdown = fer_compare.compare(experiment=EXPERIMENT)
    markdown = markdown.replace(baseline_id, "<baseline>").replace(final_id, "<final>")
    _check_golden("compare_table.md", markdown)


def test_diagnostics_text_is_unchanged_for_a_fixed_pair_of_runs(pinned_runs):
    client, baseline_id, final_id = pinned_runs
    text = "".join(diagnose_run(run_id, client).to_markdown() for run_id in (baseline_id, final_id))
    _check_golden("diagnostics.md", text)


def test_a_nan_epoch_is_never_the_best_and_the_table_still_builds(pinned_runs):
    client, baseline_id, _ = pinned_runs
    # Epoch 3 diverged: NaN validation accuracy and loss (np.argmax would call it the best).
    history = {key: values[:6] for key, values in FINAL["history"].items()}
    history["val_accuracy"] = [0.35, 0.44, float("nan"), 0.55, 0.58, 0.57]
    history["val_loss"] = [1.70, 1.50, float("nan"), 1.27, 1.21, 1.22]
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    final_id = log_run(client, experiment_id, {**FINAL, "history": history})

    _, rows, markdown = fer_compare.compare(baseline_id, final_id, experiment=EXPERIMENT)
    table = {row.metric.split(" (")[0]: row for row in rows}
    assert table["Best validation accuracy"].final == "0.5800 (epoch 5, step 4)"
    assert table["Best validation loss"].final == "1.2100"
    # The gap at epoch 5 (0.54 - 0.58); volatility over the finite changes only (none touching epoch 3).
    assert table["Overfitting risk"].final == "-4.0 pts, none (validation above training)"
    assert table["Stability"].final.startswith(f"{np.std([0.09, 0.03, -0.01]):.4f}")
    assert "nan" not in markdown.lower()
    assert "best val_loss 1.2100 was at epoch 5" in table["Diagnosis: Convergence"].final
