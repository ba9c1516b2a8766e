"""A tracking server that goes away mid-training (issue 18), with a real `mlflow server` on 127.0.0.1.

The server is killed with SIGKILL (a crash: nothing flushed) once epoch 2's loss
is in its store, then either started again on the same store and port, or not.
"""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import fer_cli, free_port, project_env, start_tracking_server
from fer.training.outbox import kept_until_logged
from fer.tracking import TrackingServerError, server_unreachable

PER_EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "peak_rss_mb")
OUTAGE_SECONDS = 30


class Server:
    """`mlflow server` with a SQLite store and `--artifacts-destination` in `folder`, on a fixed free port."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.database = folder / "server.db"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        # Its own process group (start_new_session), so that stop() ends all of it; the same
        # folder/server.db (self.database) every time.
        self.process = start_tracking_server(self.folder, self.port, timeout=180)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group and wait until it is gone.

        `mlflow server` serves from separate uvicorn and job-runner processes:
        killing only the process it started leaves the server answering.
        """
        if self.process is None:
            return
        process, self.process = self.process, None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                return
            if time.monotonic() > deadline - 30:  # a graceful shutdown that takes too long
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            time.sleep(0.2)
        pytest.fail(f"mlflow server process group {process.pid} did not end")

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                return True
        except OSError:
            return False


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path / "server")
    server.folder.mkdir()
    server.start()
    yield server
    server.stop(signal.SIGTERM)


def start_training(server: Server, tmp_path: Path, epochs: int, **env) -> subprocess.Popen:
    """`fer train phase1` on synthetic faces against the server, output into tmp_path/train.out."""
    environment = {**project_env(server.uri, tmp_path), "FER_CHECKPOINT_DIR": str(tmp_path / "checkpoints"), **env}
    command = [sys.executable, "-m", "fer.cli", "train", "phase1", "--data", "synthetic:400", "--epochs", str(epochs),
               "--batch-size", "32", "--set", "early_stopping.enabled=false"]
    with open(tmp_path / "train.out", "w") as out:
        return subprocess.Popen(command, env=environment, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)


def wait_for_stored_epoch(server: Server, training: subprocess.Popen, epoch: int, tmp_path: Path) -> None:
    """Poll the server's SQLite file until `loss` of `epoch` (1-based) is stored."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if server.database.exists():
            with sqlite3.connect(f"file:{server.database}?mode=ro", uri=True, timeout=10) as db:
                try:
                    if db.execute("SELECT 1 FROM metrics WHERE key = 'loss' AND step >= ?", (epoch - 1,)).fetchone():
                        return
                except sqlite3.OperationalError:  # tables not there yet
                    pass
        assert training.poll() is None, (tmp_path / "train.out").read_text()[-3000:]
        time.sleep(0.2)
    pytest.fail(f"epoch {epoch} was not stored within 10 minutes")


def finish(training: subprocess.Popen, tmp_path: Path) -> str:
    try:
        training.wait(timeout=900)
    finally:
        if training.poll() is None:
            training.kill()
            training.wait()
    return (tmp_path / "train.out").read_text()


def only_run(database: Path):
    """The one run in the server's store, read from its SQLite file (the server may be down)."""
    client = MlflowClient(f"sqlite:///{database}")
    runs = client.search_runs([client.get_experiment_by_name("fer").experiment_id])
    assert len(runs) == 1, [run.info.run_id for run in runs]
    return runs[0]


def assert_every_epoch_once(client: MlflowClient, run_id: str, epochs: int, tmp_path: Path) -> None:
    """Through the server (it serves the artifacts): each per-epoch metric has exactly one value per epoch, equal to the run's own history.json."""
    history = json.loads(Path(client.download_artifacts(run_id, "history.json", str(tmp_path))).read_text())
    for key in PER_EPOCH_METRICS:
        logged = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in logged) == list(range(epochs)), key
        assert [m.value for m in sorted(logged, key=lambda m: m.step)] == pytest.approx(history[key], rel=1e-6), key


@pytest.mark.slow
def test_a_run_lives_through_a_server_outage_mid_training(server, tmp_path):
    epochs = 30
    training = start_training(server, tmp_path, epochs)
    try:
        wait_for_stored_epoch(server, training, 2, tmp_path)
        server.stop()
        assert not server.answers()  # the outage is real: nothing listens on the port
        time.sleep(OUTAGE_SECONDS)
        assert training.poll() is None  # still training, or waiting on MLflow's retries
        server.start()
    finally:
        output = finish(training, tmp_path)
    assert training.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "Failed to log run data" not in output

    run = only_run(server.database)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["epochs_trained"] == epochs
    assert_every_epoch_once(MlflowClient(server.uri), run.info.run_id, epochs, tmp_path)
    assert not (tmp_path / "checkpoints" / run.info.run_id).exists()  # a logged run keeps no checkpoint


@pytest.mark.slow
def test_a_server_that_never_comes_back_leaves_the_run_kept_locally_to_resend(server, tmp_path):
    epochs = 12
    # Short retries, so that "never" shows within seconds rather than MLflow's 4 minutes.
    training = start_training(server, tmp_path, epochs,
                              MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    try:
        wait_for_stored_epoch(server, training, 2, tmp_path)
        server.stop()
    finally:
        output = finish(training, tmp_path)

    run = only_run(server.database)
    run_id = run.info.run_id
    resend = f"fer train phase1 --resume {run_id}"
    assert training.returncode == 1, output[-3000:]
    assert "stopped answering after training" in output and resend in output and "Traceback" not in output
    assert run.info.status == "RUNNING"  # the server never heard the end
    kept = tmp_path / "checkpoints" / run_id
    record = json.loads((kept / "unsent.json").read_text())
    assert record["run_id"] == run_id and record["epochs_trained"] == epochs and record["resend"] == resend
    metadata = json.loads((kept / "training_metadata.json").read_text())
    assert metadata["epoch"] == epochs and len(metadata["history"]["loss"]) == epochs

    # The server is back: the command the error gave sends everything, training nothing again.
    server.start()
    result = fer_cli(resend.split()[1:], server.uri, tmp_path, timeout=900,
                     FER_CHECKPOINT_DIR=str(tmp_path / "checkpoints"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Epoch 1/" not in result.stdout
    run = only_run(server.database)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["epochs_trained"] == epochs and "eval_accuracy" in run.data.metrics
    assert_every_epoch_once(MlflowClient(server.uri), run_id, epochs, tmp_path)
    assert not kept.exists()


# -- the parts, without a server: a closed port refuses at once -------------------------------


def refused_call():
    """A real MLflow call to a port nobody listens on, with no retries: the error a lost server gives."""
    MlflowClient(f"http://127.0.0.1:{free_port()}").search_experiments(max_results=1)


def test_a_refused_connection_is_unreachability_and_an_answered_error_is_not(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(Exception) as refused:
        refused_call()
    assert server_unreachable(refused.value)
    with pytest.raises(Exception) as answered:  # the store answered: no such run
        MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run("0" * 32)
    assert not server_unreachable(answered.value)
    assert not server_unreachable(ValueError("bad input"))


def test_the_checkpoint_goes_once_logged_and_stays_with_a_record_when_the_server_is_lost(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    history = {"loss": [2.0, 1.5, 1.2]}
    logged = tmp_path / "logged"
    logged.mkdir()
    with kept_until_logged("a" * 32, logged, "phase1", history):
        pass
    assert not logged.exists()

    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ValueError), kept_until_logged("b" * 32, other, "phase1", history):
        raise ValueError("not the server's fault")
    assert other.exists() and not (other / "unsent.json").exists()

    lost = tmp_path / "lost"
    lost.mkdir()
    with pytest.raises(TrackingServerError) as err, kept_until_logged("c" * 32, lost, "phase2", history):
        refused_call()
    assert f"fer train phase2 --resume {'c' * 32}" in str(err.value) and "3 trained epochs" in str(err.value)
    record = json.loads((lost / "unsent.json").read_text())
    assert record["run_id"] == "c" * 32 and record["epochs_trained"] == 3 and record["phase"] == "phase2"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"  # the rest of the process does not wait


def test_a_run_id_is_required():
    with pytest.raises(ValueError, match="run_id"), kept_until_logged("", Path("."), "phase1", {}):
        pass
