"""Bad parameters fail fast, with a message, through `mlflow run` (the CLI's own cases: tests/test_cli.py)."""

from pathlib import Path

import pytest

from conftest import mlflow_run

ROOT = Path(__file__).resolve().parents[1]
FER_PACKAGE = ROOT / "fer"

BAD = [
    ({"epochs": 0}, "epochs must be a positive whole number; got 0"),
    ({"batch_size": -4}, "batch_size must be a positive whole number; got -4"),
    ({"label_mode": "soft"}, "'soft' is not one of 'majority', 'probability'"),  # click's Choice
    ({"data": "/no/such/faces"}, "Data path '/no/such/faces' does not exist"),
]


@pytest.mark.slow
@pytest.mark.parametrize("params, message", BAD)
def test_mlflow_run_rejects_bad_parameters_before_training(params, message, tmp_path):
    result = mlflow_run("phase2", params, f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert message in output and "Epoch 1/" not in output


def test_no_pickle_is_ever_loaded():
    """history.pkl is written for notebooks, never read back: the project reads JSON."""
    for source in FER_PACKAGE.rglob("*.py"):
        text = source.read_text()
        for call in ("pickle.load(", "pickle.loads(", "cloudpickle.load", "allow_pickle=True"):
            assert call not in text, f"{source}: {call}"
