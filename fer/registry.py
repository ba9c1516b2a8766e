"""Promotion to the model registry, with a gate.

`promote` registers a training run's model as a new version of a registered
model, always under alias `challenger`; alias `champion` moves to it only when
its metric beats the current champion's (read from the champion's own source
run, so both are measured the same way) and clears a minimum. The decision and
its numbers go into the version's tags and description, and the training run's
evaluation metrics are linked to the registered model, so the version's model
page shows them. Versions are never deleted: every promotion stays auditable.

The registered model is the photo-capable service model (`fer.serving`),
logged by a `promote` run of its own that points at the training run.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from fer.serving import log_model_metrics
from fer.tracking import TAG_PHASE, configure_tracking, experiment_in_use

DEFAULT_MODEL_NAME = "fer-emotion"
DEFAULT_METRIC = "best_val_accuracy"
CHAMPION, CHALLENGER = "champion", "challenger"
TAG_SOURCE_RUN = "fer.source_run_id"


class PromotionError(LookupError):
    """Nothing to promote, or the chosen run lacks the metric; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Decision:
    model_name: str
    version: str
    source_run_id: str
    metric: str
    value: float
    min_value: float
    champion_version: str | None  # the champion before this promotion
    champion_value: float | None
    promoted: bool
    reason: str

    def to_text(self) -> str:
        before = (
            f"current champion v{self.champion_version} has {self.metric} = {self.champion_value:.4f}"
            if self.champion_version
            else "there was no champion"
        )
        verdict = "now champion" if self.promoted else "stays challenger"
        return (
            f"{self.model_name} v{self.version} (run {self.source_run_id}): {self.metric} = {self.value:.4f}; "
            f"{before}; minimum {self.min_value:.4f}. {verdict}: {self.reason}."
        )


def best_finished_run(client: MlflowClient, experiment: str, metric: str, phase: str = "phase2") -> Run:
    """The finished run of `phase` with the highest `metric` in `experiment`."""
    experiment_obj = client.get_experiment_by_name(experiment)
    runs = []
    if experiment_obj:
        runs = client.search_runs(
            [experiment_obj.experiment_id],
            filter_string=f"tags.`{TAG_PHASE}` = '{phase}' and attributes.status = 'FINISHED'",
            order_by=[f"metrics.`{metric}` DESC"],
            max_results=1,
        )
    if not runs or metric not in runs[0].data.metrics:
        raise PromotionError(
            f"No finished {phase} run with metric {metric!r} in experiment {experiment!r} at "
            f"{mlflow.get_tracking_uri()}. Train one first: "
            f"mlflow run . -e {phase} --env-manager local --experiment-name {experiment}"
        )
    return runs[0]


def current_champion(client: MlflowClient, model_name: str, metric: str) -> tuple[str | None, float | None]:
    """(version, metric value from its source run), or (None, None) when there is no champion."""
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None, None  # no registered model yet, or no champion alias
    source = version.tags.get(TAG_SOURCE_RUN)
    value = client.get_run(source).data.metrics.get(metric) if source else None
    return str(version.version), value


def decide(value: float, min_value: float, champion_value: float | None) -> tuple[bool, str]:
    if value < min_value:
        return False, f"{value:.4f} is below the minimum {min_value:.4f}"
    if champion_value is None:
        return True, "first model to clear the minimum"
    if value > champion_value:
        return True, f"beats the champion by {value - champion_value:+.4f}"
    return False, f"does not beat the champion ({value:.4f} <= {champion_value:.4f})"


def promote(
    run_id: str | None = None,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    metric: str = DEFAULT_METRIC,
    min_value: float = 0.0,
    experiment: str = "fer",
) -> Decision:
    """Register `run_id`'s model (default: the best finished phase-2 run) and apply the champion gate."""
    configure_tracking(None)
    client = MlflowClient()
    experiment = experiment_in_use(client, experiment)
    source = client.get_run(run_id) if run_id else best_finished_run(client, experiment, metric)
    if metric not in source.data.metrics:
        raise PromotionError(f"Run {source.info.run_id} has no metric {metric!r}; choose another with --metric.")
    value = source.data.metrics[metric]
    champion_version, champion_value = current_champion(client, model_name, metric)

    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"promote-{model_name}"):
        mlflow.set_tags({TAG_PHASE: "promote", TAG_SOURCE_RUN: source.info.run_id})
        model_info = _log_service_model(source.info.run_id)
        log_model_metrics(evaluation_metrics(client, source.info.run_id), model_info.model_id)
        version = mlflow.register_model(model_info.model_uri, model_name).version
        client.set_registered_model_alias(model_name, CHALLENGER, version)
        promoted, reason = decide(value, min_value, champion_value)
        if promoted:
            client.set_registered_model_alias(model_name, CHAMPION, version)
        decision = Decision(
            model_name, str(version), source.info.run_id, metric, value, min_value,
            champion_version, champion_value, promoted, reason,
        )
        _record(client, decision)
        mlflow.log_metrics({"promoted": float(promoted), metric: value})
    return decision


def evaluation_metrics(client: MlflowClient, run_id: str) -> dict[str, float]:
    """The metrics linked to a training run's logged model (its evaluation), by name.

    A run trained before metrics were linked to its model gives its `eval_*` run metrics.

    Example:
        evaluation_metrics(MlflowClient(), run_id)["eval_accuracy"]
    """
    run = client.get_run(run_id)
    outputs = run.outputs.model_outputs if run.outputs else []
    linked = {metric.key: metric.value for output in outputs
              for metric in client.get_logged_model(output.model_id).metrics or []}
    return linked or {key: value for key, value in run.data.metrics.items() if key.startswith("eval_")}


def _log_service_model(source_run_id: str):
    from fer.photo_service import find_keras_file, log_service_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = mlflow.artifacts.download_artifacts(f"runs:/{source_run_id}/model", dst_path=tmp)
        return log_service_model(find_keras_file(Path(model_dir)))


def _record(client: MlflowClient, decision: Decision) -> None:
    tags = {
        TAG_SOURCE_RUN: decision.source_run_id,
        "fer.metric": decision.metric,
        "fer.metric_value": f"{decision.value:.6f}",
        "fer.min_value": f"{decision.min_value:.6f}",
        "fer.champion_before": decision.champion_version or "none",
        "fer.champion_value_before": "none" if decision.champion_value is None else f"{decision.champion_value:.6f}",
        "fer.decision": CHAMPION if decision.promoted else CHALLENGER,
        "fer.reason": decision.reason,
    }
    for key, value in tags.items():
        client.set_model_version_tag(decision.model_name, decision.version, key, value)
    client.update_model_version(decision.model_name, decision.version, description=decision.to_text())
