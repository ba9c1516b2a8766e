"""Nothing is lost: killed runs resume, interrupted runs keep their state, concurrent runs all finish."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import EXPERIMENT, project_env, run_or_fail

pytestmark = pytest.mark.slow
PER_EPOCH = ("accuracy", "loss", "val_accuracy", "val_loss", "learning_rate")
TRAIN = [sys.executable, "-m", "fer.cli", "train", "phase1", "--data", "synthetic:128", "--batch-size", "32",
         "--experiment", EXPERIMENT]


def start_training(epochs: int, env: dict, cwd: Path, *settings: str) -> subprocess.Popen:
    """`fer train phase1` for `epochs` epochs with `--set` SETTINGS, in its own process (output piped, as text)."""
    sets = [arg for setting in settings for arg in ("--set", setting)]
    return subprocess.Popen(
        [*TRAIN, "--epochs", str(epochs), *sets], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, preexec_fn=_hear_ctrl_c,
    )


def interrupt(process: subprocess.Popen, sig: int, store, epochs: int = 2) -> tuple[str, str]:
    """Once the run of `process` has checkpointed `epochs` epochs, send `sig`; (run id, the output) once it ended."""
    _, client, _, tmp_path = store
    run_id = wait_for_epochs(client, tmp_path / "cache", epochs, process)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    return run_id, output


def resume(run_id: str, env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`fer train phase1 --resume RUN_ID ARGS` in its own process, output captured."""
    return subprocess.run([*TRAIN, "--resume", run_id, *args], env=env, cwd=cwd, capture_output=True, text=True)


def resumed(run_id: str, env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`resume` that must succeed."""
    result = resume(run_id, env, cwd, *args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def _hear_ctrl_c() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python then never
    # turns it into KeyboardInterrupt: undo that, so the Ctrl-C tests hold
    # however pytest itself was started.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_epochs(client: MlflowClient, cache: Path, epochs: int, process: subprocess.Popen, timeout=240) -> str:
    """The id of the running run once its checkpoint holds `epochs` epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        for run in runs:
            metadata = cache / "checkpoints" / run.info.run_id / "training_metadata.json"
            if metadata.exists() and json.loads(metadata.read_text())["epoch"] >= epochs:
                return run.info.run_id
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"no checkpoint with {epochs} epochs within {timeout}s")


def steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(uri), project_env(uri, tmp_path), tmp_path


def test_sigkilled_run_resumes_through_mlflow_run_with_no_gap_and_no_duplicate(store):
    uri, client, env, tmp_path = store
    run_id, _ = interrupt(start_training(5, env, tmp_path), signal.SIGKILL, store)
    assert client.get_run(run_id).info.status == "RUNNING"  # SIGKILL leaves no chance to say otherwise

    run_or_fail("phase1", {"resume": run_id}, uri, tmp_path)

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["fer.sittings"] == "2"
    for key in PER_EPOCH:
        assert steps(client, run_id, key) == [0, 1, 2, 3, 4], key
    history = json.loads(Path(client.download_artifacts(run_id, "history.json", str(tmp_path))).read_text())
    assert len(history["val_accuracy"]) == 5
    assert not (tmp_path / "cache" / "checkpoints" / run_id).exists()  # a finished run leaves no checkpoint


def test_a_sigkilled_run_resumes_on_a_machine_without_its_checkpoint_folder(store):
    """checkpoint_upload_every=1 puts each epoch's checkpoint in the run: the local folder is not needed."""
    uri, client, env, tmp_path = store
    run_id, _ = interrupt(start_training(5, env, tmp_path, "checkpoint_upload_every=1"), signal.SIGKILL, store)
    shutil.rmtree(tmp_path / "cache" / "checkpoints" / run_id)  # "another machine"

    result = resumed(run_id, env, tmp_path)
    assert "checkpoint from the tracking server" in result.stdout
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in PER_EPOCH:
        assert steps(client, run_id, key) == [0, 1, 2, 3, 4], key


def test_resuming_restores_the_learning_rate_state(store, monkeypatch):
    """A forced step before the kill must still be in force after it."""
    uri, client, env, tmp_path = store
    process = start_training(6, env, tmp_path, "reduce_lr.monitor=learning_rate", "reduce_lr.patience=1",
                             "early_stopping.enabled=false")
    run_id, _ = interrupt(process, signal.SIGKILL, store, epochs=3)
    resumed(run_id, env, tmp_path)
    history = sorted(client.get_metric_history(run_id, "learning_rate"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(6))
    # Steps after epochs 2 and 4 (1-based): the rate epoch 4 trained at came from the first sitting.
    np.testing.assert_allclose([m.value for m in history], [1e-3, 1e-3, 2e-4, 2e-4, 4e-5, 4e-5], rtol=1e-5)


@pytest.mark.parametrize("stop, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_ends_the_run_killed_with_history_plots_and_checkpoint(store, stop, status):
    """Exit status 128 + the signal, as a shell reports it: an interruption, not a failure (1)."""
    uri, client, env, tmp_path = store
    process = start_training(50, env, tmp_path)
    run_id, output = interrupt(process, stop, store)
    assert process.returncode == status, output[-2000:]
    assert f"--resume {run_id}" in output
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for folder in ("plots", "checkpoint") for a in client.list_artifacts(run_id, folder)
    }
    assert {"history.json", "plots/history.png", "checkpoint/training_metadata.json"} <= artifacts
    assert len(steps(client, run_id, "val_loss")) >= 2


def test_a_resumed_sitting_takes_its_own_time_budget(store):
    """A run started with no limit, interrupted, then resumed with --max-minutes: that sitting stops in time."""
    uri, client, env, tmp_path = store
    run_id, _ = interrupt(start_training(50, env, tmp_path), signal.SIGINT, store)
    result = resumed(run_id, env, tmp_path, "--max-minutes", "0.001")
    assert "a budget of 0.001 minutes for this sitting" in result.stdout
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["fer.stopped_by"] == "time_limit"
    assert run.data.tags["fer.sitting_2.max_minutes"] == "0.001"
    assert run.data.params["config.max_minutes"] == "0.0"  # the run's recipe is unchanged
    done = len(steps(client, run_id, "val_loss"))
    assert 3 <= done < 50 and done == run.data.metrics["epochs_trained"]  # one more epoch, then the limit
    assert run.data.tags["fer.sitting_2.first_epoch"] == str(done)  # that one epoch is the resumed sitting


def test_an_exception_ends_the_run_failed_with_what_it_had(tmp_path, monkeypatch):
    import keras

    import fer.training.train
    from fer.config import load_config

    class Explode(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("disk full (simulated)")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    config = load_config("phase1", {"data": "synthetic:64", "epochs": 5, "batch_size": 32})
    with pytest.raises(RuntimeError, match="disk full"):
        fer.training.train.train(config, experiment="failing", callbacks=[Explode()])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("failing").experiment_id])[0]
    assert run.info.status == "FAILED"
    assert steps(client, run.info.run_id, "loss") == [0, 1]
    assert {"history.json", "plots", "checkpoint"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    mlflow.set_tracking_uri(None)


def test_four_concurrent_runs_on_the_default_sqlite_store_all_finish_complete(tmp_path):
    env = project_env("unused", tmp_path)
    del env["MLFLOW_TRACKING_URI"]  # the default store: ./mlflow.db in the working folder
    processes = [start_training(3, env, tmp_path) for _ in range(4)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
        assert "database is locked" not in output
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 4
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in PER_EPOCH:
            assert steps(client, run.info.run_id, key) == [0, 1, 2], (run.info.run_id, key)


def test_resume_of_a_finished_run_is_refused_with_a_reason(trained_store):
    uri, client, runs, folder = trained_store
    env = project_env(uri, folder)
    result = resume(runs["phase1"].info.run_id, env, folder)
    assert result.returncode == 1
    assert "already FINISHED; there is nothing to resume" in result.stderr


def test_two_resumes_of_one_run_at_once_log_one_model_and_one_value_per_epoch(store):
    """Issue #27 reproduction 6: two re-sends (resumes) of one run started together; the second is refused."""
    uri, client, env, tmp_path = store
    run_id, _ = interrupt(start_training(5, env, tmp_path), signal.SIGKILL, store)
    both = [subprocess.Popen([*TRAIN, "--resume", run_id], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in both]
    codes = sorted(process.returncode for process in both)
    assert codes == [0, 1], outputs
    refused = outputs[[process.returncode for process in both].index(1)]
    assert f"run {run_id} is being resumed by pid" in refused or "already FINISHED" in refused, refused
    assert "Traceback" not in refused
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in (*PER_EPOCH, "peak_rss_mb"):
        if key in run.data.metrics:
            assert steps(client, run_id, key) == sorted(set(steps(client, run_id, key))), key
    for key in ("eval_accuracy", "epochs_trained"):
        assert len(client.get_metric_history(run_id, key)) == 1, key
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run_id}'")
    assert [m.name for m in models] == ["model"]
