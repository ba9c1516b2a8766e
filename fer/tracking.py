"""Where runs go: a SQLite store in the working folder unless MLFLOW_TRACKING_URI says otherwise."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one process at a time there
    fcntl = None

DEFAULT_EXPERIMENT = "fer"

# Tags every project run carries, so compare and promote can find runs by meaning.
TAG_PHASE = "fer.phase"
TAG_MODEL = "fer.model"
TAG_DATA_SOURCE = "fer.data_source"
TAG_LABEL_MODE = "fer.label_mode"
TAG_EVAL_SPLIT = "fer.eval_split"


def default_tracking_uri() -> str:
    """sqlite:///<working folder>/mlflow.db; MLflow keeps artifacts beside it in ./mlruns."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def configure_tracking(experiment: str | None = None) -> str:
    """Point MLflow at the tracking store and experiment; returns the tracking URI.

    Inside `mlflow run`, MLflow has already created the run (MLFLOW_RUN_ID) in
    the experiment it was given, so the experiment is left alone there.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        _initialize_sqlite_store(uri)
    if experiment and not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment)
    return mlflow.get_tracking_uri()


def _initialize_sqlite_store(uri: str) -> None:
    """Create or migrate a SQLite store under a file lock.

    MLflow creates the tables on first use; several processes started together
    on a new mlflow.db would race to create them ("table already exists").
    One at a time, each finds the tables there or creates them.
    """
    database = Path(uri[len("sqlite:///"):].split("?")[0])
    if fcntl is None or not database.parent.is_dir():
        return
    with open(database.with_name(database.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(Exception):  # a real problem shows at the first real call
            MlflowClient(uri).search_experiments(max_results=1)
        fcntl.flock(lock, fcntl.LOCK_UN)
