"""Shared fixtures: real `mlflow run` invocations into a temporary SQLite store."""

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

# Re-exported for the tests that start servers (scripts/local_servers.py is shared with the benchmarks).
from local_servers import (  # noqa: E402, F401
    ServerDidNotStart,
    free_port,
    start_model_server,
    start_tracking_server,
    stop_process_group,
    tracking_server,
    wait_until_healthy,
)

EXPERIMENT = "fer-test"
TRAINED_EPOCHS = 2


MLFLOW_STATE_VARIABLES = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")


@pytest.fixture(autouse=True)
def isolated_mlflow_state():
    """Each test starts with no active run or experiment left by another.

    mlflow.set_experiment remembers the experiment id in-process and in
    MLFLOW_EXPERIMENT_ID; a later test with another store would look for it there.
    """
    saved = {name: os.environ.pop(name, None) for name in MLFLOW_STATE_VARIABLES}
    yield
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.tracking.fluent._active_experiment_id = None  # no public way to forget it
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


def project_env(tracking_uri: str, tmp_path: Path) -> dict:
    """The environment a user's shell would give `mlflow run`, pointed at a test store."""
    # mlflow.set_experiment in an in-process test exports MLFLOW_EXPERIMENT_ID: don't leak it.
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["FER_CACHE_DIR"] = str(tmp_path / "cache")
    # mlflow run --env-manager local runs `python` from PATH: make it this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def fer_cli(args: list[str], tracking_uri: str, tmp_path: Path, timeout: float | None = None,
            **extra_env: str) -> subprocess.CompletedProcess:
    """`python -m fer.cli ARGS` as a user's shell runs it: `project_env` of `tracking_uri` plus
    `extra_env`, in tmp_path, its own process; stdout and stderr captured as text.

    Example:
        result = fer_cli(["compare"], f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    """
    env = {**project_env(tracking_uri, tmp_path), **extra_env}
    return subprocess.run([sys.executable, "-m", "fer.cli", *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout)


def mlflow_run(entry_point: str, params: dict, tracking_uri: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`mlflow run <project> -e ENTRY_POINT -P k=v ...` as a user types it, in its own process."""
    command = [
        sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", entry_point,
        "--env-manager", "local", "--experiment-name", EXPERIMENT,
    ]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    return subprocess.run(
        command, env=project_env(tracking_uri, tmp_path), cwd=tmp_path, capture_output=True, text=True
    )


def run_or_fail(entry_point: str, params: dict, tracking_uri: str, tmp_path: Path) -> subprocess.CompletedProcess:
    result = mlflow_run(entry_point, params, tracking_uri, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def compare_and_promote(model_name: str, tracking_uri: str, tmp_path: Path) -> tuple[MlflowClient, list]:
    """`mlflow run -e compare`, then `-e promote`, after phase 1 and phase 2 ran into `tracking_uri`.

    Asserts what a user relies on: the promote run says "now champion", version 1 of
    `model_name` holds the champion alias, and the four runs (phase1, phase2, compare,
    promote) are all FINISHED in EXPERIMENT. Returns (client, those runs).
    """
    run_or_fail("compare", {}, tracking_uri, tmp_path)
    promoted = run_or_fail("promote", {"model_name": model_name}, tracking_uri, tmp_path)
    assert "now champion" in promoted.stdout

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert sorted(run.data.tags.get("fer.phase") for run in runs) == ["compare", "phase1", "phase2", "promote"]
    assert all(run.info.status == "FINISHED" for run in runs)
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"
    return client, runs


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory):
    """A SQLite store holding one short phase-1 and one short phase-2 run, made by `mlflow run`.

    Yields (tracking URI, client, {phase: Run}, folder). Training runs are the
    slow part of the suite, so every test that needs them shares these two.
    """
    folder = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    # A time limit these runs never reach: the parameter travels, and training is left alone.
    params = {"data": "synthetic:96", "epochs": TRAINED_EPOCHS, "batch_size": 32, "seed": 3, "max_minutes": 30}
    for phase in ("phase1", "phase2"):
        run_or_fail(phase, params, uri, folder)
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = {run.data.tags["fer.phase"]: run for run in client.search_runs([experiment_id])}
    return uri, client, runs, folder


@contextlib.contextmanager
def fails_if_blocked(seconds: int = 60):
    """Turns a hang (a blocking open of a FIFO, say) into a test failure instead of a stuck suite."""

    def fail(signum, frame):
        raise AssertionError(f"still blocked after {seconds}s: something was opened that never ends")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def count_decodes(monkeypatch):
    """Counts calls of the folder loader, so a test can tell a cache hit from a decode."""
    import fer.data.folders

    calls = []
    original = fer.data.folders.load_folders

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(fer.data.folders, "load_folders", counting)
    return calls


@pytest.fixture(scope="session")
def trained_baseline():
    """`briefly_trained_baseline()`, trained once per test run: tests that use it must not change it."""
    return briefly_trained_baseline()


def briefly_trained_baseline():
    """The baseline network after one epoch on 200 drawn faces, the same on every call.

    Its weights and batch-norm statistics are no longer the initial ones, so exports, served
    models and video predictions are checked on a network whose outputs differ from face to face.
    """
    import keras
    import numpy as np

    from fer.data.synthetic import make_faces
    from fer.models import build_model

    keras.utils.set_random_seed(0)
    network = build_model("baseline")
    network.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    faces, labels = make_faces(200, seed=1)
    network.fit(faces[..., np.newaxis].astype(np.float32), labels, epochs=1, batch_size=32, verbose=0)
    return network


def assert_same_splits(a, b) -> None:
    """Two fer.data.Splits hold the same arrays, split by split, and the same description."""
    import numpy as np

    for (name, left), (_, right) in zip(a.items(), b.items(), strict=True):
        np.testing.assert_array_equal(left.images, right.images, err_msg=name)
        np.testing.assert_array_equal(left.labels, right.labels, err_msg=name)
        np.testing.assert_array_equal(left.targets, right.targets, err_msg=name)
    assert (a.source, a.location, a.label_mode, a.dropped, a.bad) == (b.source, b.location, b.label_mode, b.dropped,
                                                                     b.bad)


@contextlib.contextmanager
def active_store(folder: Path):
    """A SQLite tracking store in `folder`, active (MLFLOW_TRACKING_URI too) inside the block; its URI."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    saved_uri, saved_env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(saved_uri)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


@pytest.fixture
def in_process(tmp_path, monkeypatch):
    """A SQLite tracking store (and data cache) in tmp_path, active in this process for MLflow and for
    `fer.training.train.train` & co. (MLFLOW_TRACKING_URI, FER_CACHE_DIR, the working folder); its client."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    yield MlflowClient(uri)
    mlflow.set_tracking_uri(None)
