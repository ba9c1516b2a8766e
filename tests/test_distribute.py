"""Distributed training: MirroredStrategy over two logical CPUs, and two workers that make one MLflow run.

The strategies are TensorFlow's own; these tests check what the project adds:
the global batch, what the run records, and that only the chief logs.
"""

import json
import socket
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from conftest import fer_cli, project_env, run_or_fail
from fer.config import ConfigError, load_config
from fer.training.distribute import is_chief, worker_count

EPOCHS = 2
PER_EPOCH_METRICS = ("accuracy", "loss", "val_accuracy", "val_loss", "learning_rate")
TINY = {"data": "synthetic:64", "epochs": EPOCHS, "batch_size": 16}


def test_distribute_is_validated_and_defaults_to_auto():
    assert load_config("phase1").distribute == "auto" and load_config("phase2").distribute == "auto"
    assert load_config("phase2", {"distribute": "multi_worker"}).distribute == "multi_worker"
    with pytest.raises(ConfigError, match="distribute must be one of auto, mirrored, multi_worker, none"):
        load_config("phase2", {"distribute": "horovod"})


@pytest.mark.parametrize(
    "tf_config, chief",
    [
        (None, True),
        ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}, True),
        ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}, False),
        ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, True),
        ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, False),
        ({"cluster": {"worker": ["a:1"], "evaluator": ["e:1"]}, "task": {"type": "evaluator", "index": 0}}, False),
    ],
)
def test_the_chief_is_the_chief_task_or_worker_0(monkeypatch, tf_config, chief):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert is_chief() is chief
    assert worker_count() == (1 if tf_config is None else len(sum(
        (tf_config["cluster"].get(kind, []) for kind in ("chief", "worker")), [])))


def _one_complete_run(uri):
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [(r.info.run_id, r.info.status) for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    for key in PER_EPOCH_METRICS:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(EPOCHS)), key
    assert "eval_accuracy" in run.data.metrics
    assert client.search_logged_models([run.info.experiment_id])[0].source_run_id == run.info.run_id
    return run


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_is_one_run_with_a_global_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_LOGICAL_CPUS", "2")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # A -P that is not an entry-point parameter reaches the command as `--set distribute=mirrored`.
    run_or_fail("phase1", {**TINY, "set": "distribute=mirrored"}, uri, tmp_path)

    params = _one_complete_run(uri).data.params
    assert params["config.distribute"] == "mirrored"
    assert params["distribute.strategy"] == "MirroredStrategy"
    assert params["distribute.replicas"] == "2" and params["distribute.workers"] == "1"
    assert params["distribute.global_batch_size"] == "32"
    assert params["batch_size"] == "16"  # per replica, as mlflow run and autologging both logged it


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.slow
def test_two_workers_make_one_mlflow_run_and_only_the_chief_logs(tmp_path, monkeypatch):
    """The README's recipe: the chief through `mlflow run`, the other worker through `fer train`."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]

    def tf_config(index):
        return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setenv("FER_CHECKPOINT_DIR", str(checkpoints))
    # Worker 1 is given a store of its own: it must never create it.
    untouched = tmp_path / "worker" / "mlflow.db"
    untouched.parent.mkdir()
    worker_env = {**project_env(f"sqlite:///{untouched}", untouched.parent), "TF_CONFIG": tf_config(1)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "fer.cli", "train", "phase1", "--data", TINY["data"], "--epochs", str(EPOCHS),
         "--batch-size", str(TINY["batch_size"]), "--set", "distribute=multi_worker"],
        env=worker_env, cwd=untouched.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        monkeypatch.setenv("TF_CONFIG", tf_config(0))
        run_or_fail("phase1", {**TINY, "set": "distribute=multi_worker"}, uri, tmp_path)
        worker_output, _ = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, worker_output[-3000:]
    assert "Worker worker-1 done" in worker_output

    run = _one_complete_run(uri)
    params = run.data.params
    assert params["config.distribute"] == "multi_worker"
    assert params["distribute.strategy"] == "MultiWorkerMirroredStrategy"
    assert params["distribute.replicas"] == "2" and params["distribute.workers"] == "2"
    assert params["distribute.global_batch_size"] == "32"
    assert not untouched.exists() and not (untouched.parent / "mlruns").exists()
    # Only the chief writes to the run's checkpoint folder; the worker's went to a temporary folder.
    written = {p.name for p in checkpoints.iterdir()} if checkpoints.exists() else set()
    assert written <= {run.info.run_id}


@pytest.mark.slow  # a fresh Python process that imports TensorFlow, or seconds of work: not the fast lane
def test_a_multi_worker_run_does_not_resume_across_workers(tmp_path, monkeypatch):
    cluster = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}
    result = fer_cli(["train", "phase1", "--resume", "0123456789abcdef"], f"sqlite:///{tmp_path / 'mlflow.db'}",
                     tmp_path, TF_CONFIG=json.dumps(cluster))
    assert result.returncode == 1
    assert "resumes on one machine" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists()
