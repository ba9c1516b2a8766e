"""Where runs go: a SQLite store in the working folder unless MLFLOW_TRACKING_URI says otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow

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
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri())
    if experiment and not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment)
    return mlflow.get_tracking_uri()
