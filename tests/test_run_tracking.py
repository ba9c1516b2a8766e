"""A training run as MLflow 3 shows it: `mlflow run .` alone, evaluation metrics on the logged model
and on the registered version, system metrics.

One real `mlflow run .` (no entry point: `main`) on a tiny synthetic set, shared by the tests.
"""

import subprocess
import sys

import mlflow
import pytest
from mlflow import MlflowClient

from conftest import EXPERIMENT, ROOT, project_env

pytestmark = pytest.mark.slow
MODEL_NAME = "fer-emotion-test"


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    """`mlflow run <project>` as a user types it, without -e; yields (client, run)."""
    folder = tmp_path_factory.mktemp("main")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    command = [
        sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", "--experiment-name", EXPERIMENT,
        "-P", "data=synthetic:64", "-P", "epochs=1", "-P", "batch_size=32",
        "-P", "set=system_metrics_interval=0.5",  # a short run still gets several samples
    ]
    result = subprocess.run(command, env=project_env(uri, folder), cwd=folder, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    mlflow.set_tracking_uri(uri)
    yield client, client.get_run(run.info.run_id)
    mlflow.set_tracking_uri(None)


def test_mlflow_run_with_no_entry_point_trains_phase_2(main_run):
    _, run = main_run
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    assert (run.data.tags["fer.phase"], run.data.tags["fer.model"]) == ("phase2", "final")
    assert run.data.params["config.epochs"] == "1" and run.data.params["config.system_metrics_interval"] == "0.5"


def test_the_evaluation_metrics_are_the_logged_models_which_was_logged_before_evaluation(main_run):
    _, run = main_run
    (output,) = run.outputs.model_outputs
    assert output.step == int(run.data.metrics["epochs_trained"])  # after the last epoch (steps 0, 1, ...)
    model = mlflow.get_logged_model(output.model_id)
    # MLflow also links the run's metrics logged at the model's step: system/* samples may be among them.
    linked = {metric.key: metric for metric in model.metrics if not metric.key.startswith("system/")}
    evaluation = {key: value for key, value in run.data.metrics.items() if key.startswith("eval_")}
    assert {"eval_accuracy", "eval_macro_f1", "eval_recall_happiness"} <= set(evaluation)
    assert set(linked) == set(evaluation)
    for key, value in evaluation.items():
        assert linked[key].value == value and linked[key].run_id == run.info.run_id, key
    assert model.creation_timestamp <= min(metric.timestamp for metric in linked.values())
    # The run's other metrics stay the run's alone, and the model is the run's output, not also an input.
    assert "best_val_accuracy" in run.data.metrics and "best_val_accuracy" not in linked
    assert not run.inputs.model_inputs


def test_the_registered_version_shows_the_training_runs_evaluation(main_run, monkeypatch):
    from fer.registry import promote

    client, run = main_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())
    decision = promote(run.info.run_id, model_name=MODEL_NAME, experiment=EXPERIMENT)
    version = client.get_model_version(MODEL_NAME, decision.version)
    # Registered from a logged model (the photo service model, logged into the training run): the version's
    # source names it (and, on stores that keep it, its model_id), and its source run is the training run.
    assert version.source.startswith("models:/") and version.run_id == run.info.run_id
    model = mlflow.get_logged_model(version.model_id or version.source.removeprefix("models:/"))
    on_version = {metric.key: metric.value for metric in model.metrics}
    evaluation = {key: value for key, value in run.data.metrics.items() if key.startswith("eval_")}
    assert "eval_accuracy" in evaluation and evaluation.items() <= on_version.items()


def test_system_metrics_are_sampled_while_the_run_trains(main_run):
    pytest.importorskip("psutil", reason="MLflow's system metrics need psutil (a dependency of fer-mlflow)")
    client, run = main_run
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        # Every sample step from 0 on. (Under `mlflow run` step 0 was seen twice: MLflow's monitor resumes
        # the run `mlflow run` created; an open question, see the session notes.)
        steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, key)})
        assert len(steps) >= 2 and steps == list(range(len(steps))), key


def test_a_run_with_system_metrics_off_has_none(in_process):
    pytest.importorskip("psutil", reason="without psutil no run has system metrics: nothing to switch off")
    from fer.config import load_config
    from fer.training.train import train

    config = load_config("phase1", {"data": "synthetic:64", "batch_size": 32, "epochs": 1, "system_metrics": False,
                                    "system_metrics_interval": 0.2})
    run_id = train(config, experiment="no-system-metrics")
    metrics = in_process.get_run(run_id).data.metrics
    assert "eval_accuracy" in metrics and not [key for key in metrics if key.startswith("system/")]
